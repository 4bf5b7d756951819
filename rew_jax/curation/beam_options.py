"""The `beam` config block: where and how the curation pipeline runs, as Beam options.

    python -m rew_jax curate --config configs/curate_gemini.py --workdir gs://B/W \
        --runner dataflow --config.beam.project=P --config.beam.region=R \
        --config.beam.temp_location=gs://B/tmp --config.beam.wheel=dist/rew_jax-0.1.0-py3-none-any.whl \
        --dry-run                # prints the exact submission, runs nothing

One block serves every runner (`--runner direct|dask|dataflow`); the local runner ignores
it. `pipeline_args` turns it into the command-line options Beam parses, in a fixed order,
so that `--dry-run` shows exactly what a submission would pass. Options given after `--`
come last and win. Pure: nothing here imports Beam.

How rew_jax reaches Dataflow workers: either a wheel (`pip wheel --no-deps -w dist .`,
then `beam.wheel=dist/rew_jax-...whl`, passed as `--extra_package`; the workers pip-install
it with its dependencies at start-up), or a container image that already holds rew_jax
(`beam.sdk_container_image`; faster start, the way to go past a few workers). The
repository has no setup.py (its metadata is setup.cfg), so `--setup_file` is not used.
"""

from __future__ import annotations

import shlex
from typing import Sequence

from rew_jax import config as config_lib
from rew_jax import storage
from rew_jax.errors import ConfigError

RUNNERS = ("direct", "dask", "dataflow", "beam")  # beam: every option comes after `--`.
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"


def default_config() -> config_lib.ConfigDict:
  """Every key of the `beam` block."""
  b = config_lib.ConfigDict()
  b.num_workers = 2              # direct: processes; dask: local cluster's worker processes
                                 # (when dask_address is empty); dataflow: initial workers.
  b.direct_running_mode = "multi_processing"  # | multi_threading | in_memory
  b.dask_address = ""            # A running scheduler (tcp://HOST:8786); "": a LocalCluster
                                 # of num_workers processes, started and stopped by the run.
  b.project = ""                 # Dataflow: the Google Cloud project,
  b.region = ""                  # the region,
  b.temp_location = ""           # a gs:// folder for Beam's temporary files,
  b.staging_location = ""        # where the package is staged ("": temp_location).
  b.max_num_workers = 0          # Autoscaling cap (0: Dataflow's default).
  b.machine_type = ""            # e.g. n2-standard-8 ("": Dataflow's default).
  b.service_account_email = ""   # The workers' identity ("": the project's default).
  b.job_name = ""
  b.sdk_container_image = ""     # An image with rew_jax installed ...
  b.wheel = ""                   # ... or a rew_jax wheel the workers install.
  b.extra_options = ""           # Any other Beam options, as one shell-quoted string.
  # Client-side adaptive throttling per worker process (Beam's ReactiveThrottler, as in
  # RunInference's remote handlers): when more than 1 in `overload_ratio` calls over the last
  # minute fails (429, 5xx, timeouts), new calls wait `throttle_delay_s` with the matching
  # probability, and Dataflow is told the time spent (its autoscaler then holds back).
  b.overload_ratio = 2.0         # 0: off.
  b.throttle_delay_s = 5.0
  return b


def _flag(name: str, value) -> str:
  return f"--{name}={value}"


def pipeline_args(b, runner: str, extra: Sequence[str] = ()) -> list[str]:
  """The Beam options of `runner` from the block `b`; `extra` (after `--`) last.

  Dask without an address gets none here: the caller starts a LocalCluster and adds
  `--dask_client_address`.
  """
  if runner not in RUNNERS:
    raise ConfigError(f"Beam runner {runner!r} is not one of {RUNNERS}")
  args: list[str] = []
  if runner == "direct":
    args += [_flag("runner", "DirectRunner"), _flag("direct_num_workers", b.num_workers),
             _flag("direct_running_mode", b.direct_running_mode)]
  elif runner == "dask":
    args.append(_flag("runner", DASK_RUNNER))
    if b.dask_address:
      args.append(_flag("dask_client_address", b.dask_address))
  elif runner == "dataflow":
    missing = [k for k in ("project", "region", "temp_location") if not b[k]]
    if missing:
      raise ConfigError(f"--runner dataflow needs beam.{', beam.'.join(missing)} "
                        "(e.g. --config.beam.project=P)")
    if not storage.is_remote(b.temp_location):
      raise ConfigError(f"beam.temp_location {b.temp_location!r} must be a gs:// folder: "
                        "Dataflow workers share no disk")
    if bool(b.sdk_container_image) == bool(b.wheel):
      raise ConfigError("--runner dataflow needs exactly one of beam.sdk_container_image (an "
                        "image with rew_jax installed) or beam.wheel (pip wheel --no-deps -w "
                        "dist .): workers do not have rew_jax otherwise")
    args += [_flag("runner", "DataflowRunner"), _flag("project", b.project),
             _flag("region", b.region), _flag("temp_location", b.temp_location)]
    args += [_flag(name, b[name]) for name in (
        "staging_location", "num_workers", "max_num_workers", "machine_type",
        "service_account_email", "job_name") if b[name]]  # The ones the config sets.
    if b.sdk_container_image:
      args.append(_flag("sdk_container_image", b.sdk_container_image))
    else:
      args.append(_flag("extra_package", b.wheel))
  return args + shlex.split(b.extra_options) + list(extra)


def describe(args: Sequence[str], workdir: str) -> str:
  """What `--dry-run` prints: the options as Beam parses them, one per line."""
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top
  parsed = PipelineOptions(list(args)).get_all_options(drop_default=True, retain_unknown_options=True)
  lines = [f"workdir: {workdir}", "pipeline options (as Beam parses them):"]
  lines += [f"  {k} = {v!r}" for k, v in sorted(parsed.items())]
  lines += ["argv: " + " ".join(shlex.quote(a) for a in args)]
  return "\n".join(lines)
