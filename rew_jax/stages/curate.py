"""`python -m rew_jax curate`: LLM curation of the candidates into REW records + report.

    python -m rew_jax curate --config configs/curate_demo.py --workdir W [--restart]
    python -m rew_jax curate --config configs/curate_demo.py --workdir W --runner dask
    python -m rew_jax curate --config configs/curate_gemini.py --workdir gs://B/W \
        --runner dataflow --config.beam.project=P --config.beam.region=R \
        --config.beam.temp_location=gs://B/tmp --config.beam.wheel=dist/rew_jax-0.1.0-py3-none-any.whl --dry-run

Reads the config's `curation` section and, for the Beam runners (`direct`, `dask`,
`dataflow`; `beam` takes every option after `--`), its `beam` block
(`rew_jax/curation/beam_options.py`). `--dry-run` prints the Beam options a run would pass
and runs nothing. A pipeline config with `world` and `candidates` sections
(configs/curate_demo.py, configs/demo.py) makes those first when they are missing or were
made by another config. Writes W/records and W/curation (see `rew_jax.workdir`). Exactly
once and resumable on every runner: a rerun of the same command continues; a workdir
curated under another `curation` section is refused unless `--restart` discards it.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

from rew_jax import config as config_lib
from rew_jax import storage
from rew_jax import workdir as workdir_lib
from rew_jax.curation import beam_options
from rew_jax.curation import report as report_lib
from rew_jax.curation import run as run_lib
from rew_jax.curation import section as section_lib
from rew_jax.errors import ConfigError
from rew_jax.stages import base
from rew_jax.stages import candidates as candidates_stage

SECTION = section_lib.NAME
RUNNERS = ("local",) + beam_options.RUNNERS


def resolve(config):
  """The checked `curation` section: the runner's keys and one options group per backend it
  names (`curation.gemini`, `curation.simulated`), each checked against the schema its
  component declares (`rew_jax.curation.section.schema`)."""
  section = config_lib.section(config, SECTION, None)
  config_lib.check_keys(section, section_lib.schema(section), SECTION)
  if "beam" in config:
    config_lib.check_keys(config.beam, beam_options.default_config(), "beam")
  return section


def run(config, wd: workdir_lib.Workdir, *, runner: str = "local", restart: bool = False,
        redo_changed: bool = False, pipeline_args: Sequence[str] = (), dry_run: bool = False,
        progress: base.Progress | None = None, verbose: bool = True, backend=None) -> dict:
  """Upstream stages the config describes, then curation; returns the curation report.

  Records made from other candidates or by another `curation` section are refused (the
  runner's state check) unless `restart`; `redo_changed` discards them instead (the demo).
  """
  progress = progress or base.Progress()
  if dry_run:  # Checks the config and prints the submission; touches nothing.
    resolve(config)
    if runner == "local":
      raise ConfigError("--dry-run shows a Beam submission: pass --runner direct|dask|dataflow")
    from rew_jax.curation import beam  # pylint: disable=g-import-not-at-top  (extra `beam`)
    return beam.curate(config, wd.root, runner=runner, pipeline_args=pipeline_args,
                       dry_run=True)
  logging.getLogger("bm25s").setLevel(logging.WARNING)  # Its index build logs at DEBUG.
  section = resolve(config)
  paths = section_lib.paths_of(section, wd.root)
  if candidates_stage.SECTION in config:
    candidates_stage.ensure(config, wd, progress=progress)
  elif not storage.isfile(os.path.join(paths["candidates"], "manifest.json")):
    raise ConfigError(
        f"{paths['candidates']} holds no complete candidates (no manifest.json) and the "
        "config has no `candidates` section to make them: run `python -m rew_jax "
        "candidates` first")
  digest = workdir_lib.fingerprint(section, workdir_lib.stamp_of(paths["candidates"]))
  stamp = workdir_lib.read_stamp(paths["out"])
  if redo_changed and stamp and stamp["fingerprint"] != digest:
    restart = True
  progress.header(f"curation ({section.backend})")
  if runner != "local":
    from rew_jax.curation import beam  # pylint: disable=g-import-not-at-top  (extra `beam`)
    report = beam.curate(config, wd.root, runner=runner, pipeline_args=pipeline_args,
                         restart=restart, log=progress.line)
  else:
    report = run_lib.curate(config, wd.root, restart=restart, verbose=verbose,
                            backend=backend)
  workdir_lib.write_stamp(paths["out"], "curate", digest)
  return report


def main(argv: Sequence[str]) -> int:
  argv = list(argv)
  pipeline_args = argv[argv.index("--") + 1:] if "--" in argv else []
  argv = argv[:argv.index("--")] if "--" in argv else argv
  p = base.parser("curate", __doc__)
  base.add_config(p, required=True, sections="curation (and world, candidates)")
  base.add_workdir(p, "output: WORKDIR/records and WORKDIR/curation")
  p.add_argument("--runner", choices=RUNNERS, default="local",
                 help="local (threads in this process), or a Beam runner: direct, dask (a "
                 "local cluster, or beam.dask_address), dataflow (options from the config's "
                 "`beam` block), beam (every option after `--`)")
  p.add_argument("--dry-run", action="store_true",
                 help="print the Beam options of the submission and run nothing")
  p.add_argument("--restart", action="store_true",
                 help="discard records and journals of an earlier run in this workdir")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  args, config = base.parse(p, argv)
  wd = workdir_lib.Workdir(args.workdir)
  report = run(config, wd, runner=args.runner, restart=args.restart,
               pipeline_args=pipeline_args, dry_run=args.dry_run, verbose=not args.quiet)
  if args.dry_run:
    print(report["dry_run"])
    return 0
  print(report_lib.summary_line(report))
  paths = section_lib.paths_of(config.curation, wd.root)
  print(f"records: {paths['out']}; report: {os.path.join(paths['curation'], 'report.md')}")
  return 0
