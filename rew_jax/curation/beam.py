"""The curation step as an Apache Beam pipeline (extra `beam`), for DirectRunner, a Dask
cluster or Dataflow. The `curate` stage runs it with `--runner direct|dask|dataflow`:

    python -m rew_jax curate --config configs/curate_demo.py --workdir W --runner dask
    python -m rew_jax curate --config configs/curate_gemini.py --workdir gs://B/W \
        --runner dataflow --config.beam.project=P ... --dry-run

The runner's options come from the config's `beam` block (`rew_jax.curation.beam_options`).
Like the local runner (`run.py`), this is an executor over the shard engine
(`rew_jax.curation.shards`): the state check, the journal, the dead letters, the commit,
the manifest and the report are the engine's, and a worker runs the engine's
`curate_shard`, so the two write byte-identical records and equal manifests.

    driver:  shards.plan (state check) → KB index built once (read-only for workers)
             → the shards not yet committed
    workers: ListShards → Spread → CurateShard (shards.curate_shard: one candidates shard
             per element, its records curated by `curation.concurrency` threads)
    final:   OneKey → GroupByKey (waits for every shard) → WriteManifest, once
    driver:  shards.report, from the journals and dead letters

Deduplication (`curation.dedup`): the driver hashes the evaluation images once and the
plan carries the hashes to every worker (32 bytes per image at the default 256 bits). The
driver reads the evaluation images from its own disk.

What a worker process holds, once (`apache_beam.utils.shared.Shared`, shared by its
threads and by every bundle it runs): the backend client, the KB tables (memory-mapped), the
BM25 title index and the rate limiter (so `rate_limit_per_s` is per worker process), which
adds Beam's client-side adaptive throttling (`AdaptiveLimiter`). The KB index is built by
the driver before the pipeline starts; workers only open it, and one that is missing or
stale is an error, never a rebuild. A `gs://` index is copied once to each worker
machine's cache.

Resume: a shard is done when its output file exists, and within an unfinished shard the
journal keeps every finished record's outcome; so a job killed at any moment, then rerun,
neither loses nor duplicates a record, nor pays a journaled LLM call twice. A shard curated
twice at once (a killed job's orphaned task and the rerun) ends with one journal line per
record and one complete version of the shard.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from typing import Sequence

from rew_jax import config as config_lib
from rew_jax import registry
from rew_jax import storage
from rew_jax.curation import beam_options
from rew_jax.curation import core
from rew_jax.curation import inputs
from rew_jax.curation import section
from rew_jax.curation import shards
from rew_jax.errors import ConfigError


def _import_beam():
  try:
    import apache_beam as beam  # pylint: disable=g-import-not-at-top
  except ImportError:
    from rew_jax.errors import UserError  # pylint: disable=g-import-not-at-top
    raise UserError("the Beam pipeline needs apache-beam: pip install 'rew_jax[beam]'") from None
  return beam


# ------------------------------------------------------------------------ driver: planning


def _build_kb_index(plan_: shards.Plan) -> None:
  """The KB index and its BM25 index, built here once if missing or stale. A gs:// index is
  not built (each worker would copy a half-built one): it must exist."""
  if storage.is_remote(plan_.kb_index):
    if not storage.exists(os.path.join(plan_.kb_index, "meta.json")):
      raise inputs.InputError(f"KB index {plan_.kb_index!r} does not exist: build it (python "
                              "-m rew_jax candidates, or a local curation run) first")
    return
  shards.open_kb(plan_)  # Builds what is missing, here and only here.


# ------------------------------------------------------------------------ workers


def _files(directory: str, prefix: str = "") -> list[str]:
  """Paths of the files under `directory`, relative to it (epath has no recursive glob on
  object stores)."""
  out = []
  for child in storage.path(directory).iterdir():
    rel = f"{prefix}{child.name}"
    if child.is_dir():
      out += _files(os.fspath(child), rel + "/")
    else:
      out.append(rel)
  return out


def stage_index(index_dir: str) -> str:
  """A local directory holding the KB index: `index_dir` itself, or a copy of a gs:// one
  in this machine's cache (made once; renamed into place, so concurrent processes agree)."""
  if not storage.is_remote(index_dir):
    return index_dir
  import hashlib  # pylint: disable=g-import-not-at-top
  meta = storage.read_text(os.path.join(index_dir, "meta.json"))
  key = hashlib.sha256(f"{index_dir}|{meta}".encode()).hexdigest()[:16]
  local = os.path.join(storage.cache_dir(), "kb_index", key)
  if os.path.isfile(os.path.join(local, "meta.json")):
    return local
  os.makedirs(os.path.dirname(local), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".staging-", dir=os.path.dirname(local))
  for rel in _files(index_dir):
    dest = os.path.join(tmp, rel)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    storage.path(index_dir).joinpath(rel).copy(dest, overwrite=True)
  try:
    os.rename(tmp, local)
  except OSError:  # Another process staged it first.
    storage.rmtree(tmp)
  return local


class AdaptiveLimiter(core.RateLimiter):
  """The configured rate limit plus Beam's client-side adaptive throttling (ReactiveThrottler,
  the throttler of RunInference's remote model handlers): after many failed calls, a new
  call waits with probability max(0, (calls - ratio × successes) / (calls + 1)) over the
  last minute, and the wait is reported to the runner as throttled time. A waiting call
  counts as a call, so while failures dominate the window, calls get through rarely until
  they leave it: the delay must be seconds, not milliseconds.

  The throttle applies only while a call has failed within the window. Without that rule,
  calls in flight count as unanswered: at a worker's start, `concurrency` simultaneous first
  calls looked like an overload and some waited `delay_s` although nothing had failed
  (measured: a 60-record shard at concurrency 4 against a 200 ms endpoint took 5.9 s
  instead of 3.2 s)."""

  def __init__(self, per_s: float, overload_ratio: float, delay_s: float, sleep=time.sleep,
               clock=time.time):
    super().__init__(per_s)
    from apache_beam.io.components.adaptive_throttler import ReactiveThrottler  # pylint: disable=g-import-not-at-top
    self.throttler = ReactiveThrottler(window_ms=60_000, bucket_ms=1_000,
                                       overload_ratio=overload_ratio,
                                       namespace="rew_jax.curation",
                                       throttle_delay_secs=max(1, round(delay_s)))
    self.delay_s = delay_s
    self.waits = 0
    self._last_failure = float("-inf")
    self._throttle_lock = threading.Lock()  # The throttler's moving sums are not thread-safe.
    self._sleep, self._clock = sleep, clock

  def acquire(self) -> None:
    while True:
      with self._throttle_lock:
        now = self._clock()
        wait = (self.throttler.throttle_request(now * 1000) and
                now - self._last_failure < 60.0)  # The throttler's window.
        self.waits += wait
      if not wait:
        break
      self._sleep(self.delay_s)
      self.throttler.throttling_signaler.signal_throttled(max(1, round(self.delay_s)))
    super().acquire()

  def succeeded(self) -> None:
    with self._throttle_lock:
      self.throttler.successful_request(self._clock() * 1000)

  def failed(self) -> None:
    with self._throttle_lock:
      self._last_failure = self._clock()


class Worker:
  """What one worker process holds for curation, shared by its threads and bundles."""

  def __init__(self, plan_: shards.Plan):
    config = config_lib.ConfigDict(plan_.config)
    c = config.curation
    self.backend = section.backend_from_config(config, plan_.paths)
    self.kb = inputs.KBLookup.open_index(stage_index(plan_.kb_index))
    b = config.get("beam", beam_options.default_config())
    ratio = b.get("overload_ratio", 2.0)
    limiter = (AdaptiveLimiter(c.rate_limit_per_s, ratio, b.get("throttle_delay_s", 5.0))
               if ratio > 0 else core.RateLimiter(c.rate_limit_per_s))
    self.curator = core.Curator(self.backend, self.kb, core.Settings.from_config(c), limiter)
    self.concurrency = max(1, c.concurrency)
    self.backend_name = registry.CURATION_BACKENDS.get(c.backend).name


def build(pipeline, plan_: shards.Plan, todo: Sequence[int]):
  """Adds the curation to `pipeline`: → a PCollection with one bool, whether the manifest
  was written."""
  beam = _import_beam()
  from apache_beam.utils import shared  # pylint: disable=g-import-not-at-top

  class CurateShardFn(beam.DoFn):
    def __init__(self, plan_: shards.Plan):
      self.plan = plan_
      self._shared = shared.Shared()

    def setup(self):
      # Once per worker process: Dask calls setup per partition, the DirectRunner per thread.
      self.worker = self._shared.acquire(lambda: Worker(self.plan), tag=self.plan.config_hash)

    def process(self, shard_index):
      w = self.worker
      yield shards.curate_shard(self.plan, shard_index, w.curator, concurrency=w.concurrency,
                                backend_name=w.backend_name)

  # One element per shard: the runner spreads shards over workers and threads within a
  # shard keep `concurrency` calls in flight. No finish_bundle outputs and no side outputs,
  # which the DaskRunner (2.77) drops.
  return (pipeline
          | "ListShards" >> beam.Create(list(todo))
          | "Spread" >> beam.Reshuffle()
          | "CurateShard" >> beam.ParDo(CurateShardFn(plan_))
          | "OneKey" >> beam.Map(lambda info: (None, info))
          | "AllShards" >> beam.GroupByKey()
          | "WriteManifest" >> beam.Map(lambda _: shards.write_manifest(plan_)))


# ------------------------------------------------------------------------ driver: running


class _LocalDask:
  """A dask.distributed LocalCluster of `n` worker processes for one run (no address given)."""

  def __init__(self, n: int):
    from dask import distributed  # pylint: disable=g-import-not-at-top
    self.cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                            dashboard_address=":0")
    self.client = distributed.Client(self.cluster)
    self.address = self.cluster.scheduler_address

  def close(self):
    self.client.close()  # Before the cluster, or the client retries to connect for 30 s.
    self.cluster.close()


def options_for(config, runner: str, extra: Sequence[str] = (), num_shards: int = 0
                ) -> list[str]:
  """The Beam options of a run (the `beam` block, defaults when the config has none)."""
  b = beam_options.default_config()
  if "beam" in config:
    b.update(config.beam)
  args = beam_options.pipeline_args(b, runner, extra)
  if runner == "dask" and num_shards:
    # The DaskRunner makes one partition per 128 created elements; one per shard lets
    # every worker take shards.
    args.insert(1, f"--dask_npartitions={num_shards}")
  return args


def curate(config, workdir: str, *, runner: str = "direct", pipeline_args: Sequence[str] = (),
           restart: bool = False, dry_run: bool = False, log=print) -> dict:
  """Runs the pipeline over the shards not yet committed, then the report; → the report
  (with `dry_run`: {"dry_run": text}, having checked the config and run nothing)."""
  beam = _import_beam()
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top
  c = config.curation
  if c.get("mode_of_calls", "online") != "online":
    # A batch job is the service's own parallelism: one driver submits and polls it, and
    # workers each submitting would break the journal's one-job-per-request guarantee.
    raise ConfigError(f"curation.mode_of_calls {c.mode_of_calls!r} runs in one driver "
                      f"(the service does the parallel work): use --runner local, not "
                      f"--runner {runner}")
  if runner == "dataflow":
    paths = section.paths_of(c, workdir)
    # Workers copy it from the bucket. A dry run touches no storage.
    paths["kb index"] = section.kb_paths(c, paths, read_manifest=not dry_run)[1]
    local = [f"{k} {paths[k]!r}" for k in ("candidates", "out", "curation", "kb index")
             if not storage.is_remote(paths[k])]
    if local:
      raise ConfigError(f"--runner dataflow: Dataflow workers share no disk, but {', '.join(local)} "
                        "is local; use a gs:// --workdir (or gs:// curation paths)")
  if dry_run:
    args = options_for(config, runner, pipeline_args)
    core.Settings.from_config(c)
    text = beam_options.describe(args, workdir)
    if runner == "dask" and not any(a.startswith("--dask_client_address") for a in args):
      b = config.get("beam", beam_options.default_config())
      text += (f"\n(no beam.dask_address: the run starts a LocalCluster of "
               f"{b.get('num_workers', 2)} worker processes and adds its address)")
    return {"dry_run": text}
  plan_ = shards.plan(config, workdir, restart)
  _build_kb_index(plan_)
  todo = plan_.todo()
  start = time.time()
  if todo:
    cluster = None
    b = config.get("beam", beam_options.default_config())
    if runner == "dask" and not b.get("dask_address", "") and not any(
        a.startswith("--dask_client_address") for a in pipeline_args):
      cluster = _LocalDask(b.get("num_workers", 2))
      pipeline_args = [f"--dask_client_address={cluster.address}", *pipeline_args]
    try:
      args = options_for(config, runner, pipeline_args, num_shards=len(todo))
      log(f"curating {len(todo)} of {len(plan_.shards)} shards on Beam: {' '.join(args)}")
      p = beam.Pipeline(options=PipelineOptions(args))
      build(p, plan_, todo)
      result = p.run()
      try:
        result.wait_until_finish()
      finally:
        client = getattr(result, "client", None)  # The DaskRunner leaves its client open.
        if client is not None:
          client.close()
    finally:
      if cluster is not None:
        cluster.close()
  else:
    shards.write_manifest(plan_)  # All were committed by an earlier run (which may have died last).
  return shards.report(plan_, seconds=time.time() - start)
