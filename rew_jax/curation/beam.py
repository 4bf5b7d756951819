"""The curation step as an Apache Beam pipeline (extra `beam`), for DirectRunner, a Dask
cluster or Dataflow. The `curate` stage runs it with `--runner direct|dask|dataflow`:

    python -m rew_jax curate --config configs/curate_demo.py --workdir W --runner dask
    python -m rew_jax curate --config configs/curate_gemini.py --workdir gs://B/W \
        --runner dataflow --config.beam.project=P ... --dry-run

The runner's options come from the config's `beam` block (`rew_jax.curation.beam_options`).

    driver:  check state → KB index built once (read-only for workers) → shards to do
    workers: ListShards → Spread → CurateShard (one candidates shard per element; its
             records curated by `curation.concurrency` threads) → journal, dead letters and
             the shard, each committed whole
    final:   OneKey → GroupByKey (waits for every shard) → WriteManifest, once
    driver:  the report, from the journals

The per-record logic is `rew_jax.curation.core.Curator`, exactly as in the local runner, and
shard i of the input becomes `records/rew-0000i.array_record` with records in input order:
the two runners write byte-identical shards and equal manifests.

Deduplication (`curation.dedup`): the driver hashes the evaluation images once and the
plan carries the hashes to every worker (32 bytes per image at the default 256 bits); a web
image within `max_distance` of one is left out before any LLM call and counted in the
report, as by the local runner. The driver reads the evaluation images from its own disk.

What a worker process holds, once (`apache_beam.utils.shared.Shared`, shared by its
threads and by every bundle it runs): the backend client, the KB tables (memory-mapped), the
BM25 title index and the rate limiter (so `rate_limit_per_s` is per worker process). The
KB index is built by the driver before the pipeline starts; workers only open it, and one
that is missing or stale is an error, never a rebuild. A `gs://` index is copied once to
each worker machine's cache.

Storage: every input and output goes through `rew_jax.storage` (etils.epath), so the
workdir, candidates and images may be `gs://`. A shard is written to a worker-local file
and then renamed (local) or uploaded as one object (gs://): the commit is atomic.

Dead letters: `W/curation/dead_letters/<candidates shard>` lists, with its reason, every
input that gave no labelled record: `bad_image` (does not decode), `unresolved` (no valid
reply, or a name outside the KB; still written as a record with that status, as the local
runner does) and `failed` (transient errors after `max_attempts`). A shard with a `failed`
record is not committed; its journal keeps the other outcomes, so a rerun calls the LLM for
exactly the failed records. The report counts each kind.

Resume: a shard is done when its output file exists; a rerun of the same command skips done
shards, so a job killed at any moment, then rerun, neither loses nor duplicates a record.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import tempfile
import threading
import time
from typing import Sequence

from rew_jax import config as config_lib
from rew_jax import records as records_lib
from rew_jax import registry
from rew_jax import storage
from rew_jax.curation import beam_options
from rew_jax.curation import core, inputs
from rew_jax.curation import dedup as dedup_lib
from rew_jax.curation import report as report_lib
from rew_jax.curation import run
from rew_jax.curation.backends.base import TransientError
from rew_jax.errors import ConfigError

DEAD_LETTER_DIR, FAILED = run.DEAD_LETTER_DIR, run.FAILED


def _import_beam():
  try:
    import apache_beam as beam  # pylint: disable=g-import-not-at-top
  except ImportError:
    from rew_jax.errors import UserError  # pylint: disable=g-import-not-at-top
    raise UserError("the Beam pipeline needs apache-beam: pip install 'rew_jax[beam]'") from None
  return beam


@dataclasses.dataclass(frozen=True)
class Plan:
  """What the driver decided; pickled to the workers with the DoFns."""
  config: dict        # The whole config, as a plain dict.
  paths: dict         # run.paths_of(...), the same on every machine.
  kb_index: str       # The KB index directory (built); may be gs://.
  image_root: str
  names: tuple        # Output shard names, one per input shard.
  shards: tuple       # Input shard paths.
  config_hash: str
  # The evaluation images' hashes (`curation.dedup`), hashed once by the driver; None: off.
  dedup: dedup_lib.EvalIndex | None = None

  @property
  def journal_dir(self) -> str:
    return os.path.join(self.paths["curation"], run.JOURNAL_DIR)

  @property
  def dead_letter_dir(self) -> str:
    return os.path.join(self.paths["curation"], DEAD_LETTER_DIR)


# ------------------------------------------------------------------------ driver: planning


def _state(config, shards: Sequence[str]) -> dict:
  """run.run_state, through storage (the shards may be gs://)."""
  return {"config_hash": run.curation_hash(config), "backend": config.curation.backend,
          "inputs": [[os.path.basename(p), storage.getsize(p)] for p in shards]}


def _check_state(plan: Plan, state: dict, restart: bool) -> None:
  """As the local runner's: refuses another config's or other inputs' workdir."""
  curation_dir = plan.paths["curation"]
  path = os.path.join(curation_dir, run.STATE_NAME)
  if not restart:
    run.refuse_other_state(path, state)
  if restart:
    for d in (plan.paths["out"], plan.journal_dir, plan.dead_letter_dir):
      storage.rmtree(d)
  for d in (curation_dir, plan.paths["out"], plan.journal_dir, plan.dead_letter_dir):
    storage.makedirs(d)
  storage.write_text(path, json.dumps(state, indent=1))
  if not storage.is_remote(plan.paths["out"]):  # Temporary files of killed local writers.
    for tmp in storage.glob(plan.paths["out"], f".*{records_lib.SHARD_SUFFIX}.tmp-*"):
      storage.remove(tmp)


def _build_kb_index(c, paths: dict) -> str:
  """The KB index and its BM25 index, built here once if missing or stale; → its directory.
  A gs:// index is not built (memory-mapped tables need a local disk): it must exist."""
  source, index_dir = run.kb_paths(c, paths)
  if storage.is_remote(index_dir):
    if not storage.exists(os.path.join(index_dir, "meta.json")):
      raise inputs.InputError(f"KB index {index_dir!r} does not exist: build it on a local disk "
                              "(python -m rew_jax candidates) and copy it there")
    return index_dir
  inputs.KBLookup.open(source, index_dir)  # Builds what is missing, here and only here.
  return index_dir


def plan(config, workdir: str, restart: bool = False) -> tuple[Plan, list[int]]:
  """Checks the workdir and builds the KB index; → (plan, indexes of the shards to do)."""
  c = config.curation
  core.Settings.from_config(c)  # A config error now, not on a worker.
  paths = run.paths_of(c, workdir)
  shards = inputs.candidate_shards(paths["candidates"])
  kb_index = _build_kb_index(c, paths)
  state = _state(config, shards)
  image_root = c.image_root or paths["world"]
  p = Plan(config=config.to_dict(), paths=paths, kb_index=kb_index, image_root=image_root,
           names=tuple(records_lib.shard_name(i) for i in range(len(shards))),
           shards=tuple(shards), config_hash=state["config_hash"],
           dedup=dedup_lib.EvalIndex.from_config(run.dedup_config(c, image_root)))
  _check_state(p, state, restart)
  todo = [i for i, name in enumerate(p.names)
          if not storage.exists(os.path.join(paths["out"], name))]
  return p, todo


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

  def __init__(self, plan_: Plan):
    config = config_lib.ConfigDict(plan_.config)
    c = config.curation
    self.backend = run.make_backend(config, plan_.paths)
    self.kb = inputs.KBLookup.open_index(stage_index(plan_.kb_index))
    b = config.get("beam", beam_options.default_config())
    ratio = b.get("overload_ratio", 2.0)
    limiter = (AdaptiveLimiter(c.rate_limit_per_s, ratio, b.get("throttle_delay_s", 5.0))
               if ratio > 0 else core.RateLimiter(c.rate_limit_per_s))
    self.curator = core.Curator(self.backend, self.kb, core.Settings.from_config(c), limiter)
    self.concurrency = max(1, c.concurrency)
    self.backend_name = registry.CURATION_BACKENDS.get(c.backend).name


def curate_item(worker: Worker, item: core.Item, image_root: str,
                dedup: dedup_lib.EvalIndex | None = None) -> core.Outcome:
  """One record's outcome; a bad image, a copy of an evaluation image or exhausted retries
  are outcomes, not exceptions."""
  image, mime, left_out = run.screen(item, image_root, dedup)
  if left_out is not None:
    return left_out
  try:
    return worker.curator.curate(item, image, mime)
  except TransientError as e:
    return run.failed_outcome(item, e)


def read_outcomes(path: str) -> dict[int, core.Outcome]:
  """A journal's outcomes by line index; a torn last line (a killed local runner) is ignored."""
  if not storage.exists(path):
    return {}
  data = storage.read_text(path)
  done = {}
  for line in data[:data.rfind("\n") + 1].splitlines():
    if line.strip():
      out = core.Outcome.from_json(json.loads(line))
      done.setdefault(out.index, out)
  return done


def curate_shard(worker: Worker, plan_: Plan, shard_index: int) -> dict:
  """Curates one candidates shard and commits its journal, dead letters and records."""
  shard = plan_.shards[shard_index]
  skipped = records_lib.SkipCounter() if plan_.config["curation"]["skip_bad_inputs"] else None
  items = inputs.read_items(shard, skipped)
  base = os.path.basename(shard)
  journal_path = os.path.join(plan_.journal_dir, base)
  done = {i: o for i, o in read_outcomes(journal_path).items() if o.status != FAILED}
  todo = run.journal_todo(journal_path, done, items)
  with concurrent.futures.ThreadPoolExecutor(min(worker.concurrency, max(1, len(todo)))) as ex:
    for out in ex.map(lambda it: curate_item(worker, it, plan_.image_root, plan_.dedup), todo):
      done[out.index] = out
  storage.write_text(journal_path, "".join(
      json.dumps(done[it.index].to_json(), ensure_ascii=False) + "\n" for it in items))
  letters = run.dead_letter_lines(items, done)
  storage.write_text(os.path.join(plan_.dead_letter_dir, base),
                     "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in letters))
  failed = sum(d["kind"] == FAILED for d in letters)
  name = plan_.names[shard_index]
  if not failed:
    run.commit_shard(os.path.join(plan_.paths["out"], name), items, done, plan_.image_root,
                     worker.backend_name)
  return {"name": name, "records": len(items), "curated": len(todo), "failed": failed}


def write_manifest(plan_: Plan) -> bool:
  """The manifest, once every shard is committed (a shard with failed records is not)."""
  out = plan_.paths["out"]
  if not all(storage.exists(os.path.join(out, n)) for n in plan_.names):
    return False
  c = plan_.config["curation"]
  manifest = records_lib.describe_shards(out, list(plan_.names), source=c["source"],
                                         curation_config_hash=plan_.config_hash)
  manifest.save(out)
  return True


def build(pipeline, plan_: Plan, todo: Sequence[int]):
  """Adds the curation to `pipeline`: → a PCollection with one bool, whether the manifest
  was written."""
  beam = _import_beam()
  from apache_beam.utils import shared  # pylint: disable=g-import-not-at-top

  class CurateShardFn(beam.DoFn):
    def __init__(self, plan_: Plan):
      self.plan = plan_
      self._shared = shared.Shared()

    def setup(self):
      # Once per worker process: Dask calls setup per partition, the DirectRunner per thread.
      self.worker = self._shared.acquire(lambda: Worker(self.plan), tag=self.plan.config_hash)

    def process(self, shard_index):
      yield curate_shard(self.worker, self.plan, shard_index)

  # One element per shard: the runner spreads shards over workers and threads within a
  # shard keep `concurrency` calls in flight. No finish_bundle outputs and no side outputs,
  # which the DaskRunner (2.77) drops.
  return (pipeline
          | "ListShards" >> beam.Create(list(todo))
          | "Spread" >> beam.Reshuffle()
          | "CurateShard" >> beam.ParDo(CurateShardFn(plan_))
          | "OneKey" >> beam.Map(lambda info: (None, info))
          | "AllShards" >> beam.GroupByKey()
          | "WriteManifest" >> beam.Map(lambda _: write_manifest(plan_)))


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
  if runner == "dataflow":
    paths = run.paths_of(c, workdir)
    paths["kb index"] = run.kb_paths(c, paths)[1]  # Workers copy it from the bucket.
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
  plan_, todo = plan(config, workdir, restart)
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
    write_manifest(plan_)  # All were committed by an earlier run (which may have died last).
  return report(plan_, seconds=time.time() - start)


def report(plan_: Plan, seconds: float) -> dict:
  """The report from the journals (as the local runner's), plus the dead letters; raises
  IncompleteRunError when failed records kept shards uncommitted."""
  config = config_lib.ConfigDict(plan_.config)
  c = config.curation
  manifest_path = os.path.join(plan_.paths["out"], records_lib.MANIFEST_NAME)
  kinds: dict[str, int] = {}
  first_failed = ""
  for shard in plan_.shards:
    path = os.path.join(plan_.dead_letter_dir, os.path.basename(shard))
    for line in (storage.read_text(path).splitlines() if storage.exists(path) else ()):
      d = json.loads(line)
      kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
      if d["kind"] == FAILED and not first_failed:
        first_failed = f"{d['shard']}:{d['line']} ({d['image_id']}): {d['reason']}"
  if not storage.exists(manifest_path):
    raise run.IncompleteRunError(
        f"{kinds.get(FAILED, 0)} records still failed after {c.max_attempts} attempts "
        f"(first: {first_failed}; all: {plan_.dead_letter_dir}); the others are saved: rerun "
        "the same command to retry them")
  manifest = records_lib.Manifest.load(plan_.paths["out"])
  settings = core.Settings.from_config(c)
  builder = report_lib.ReportBuilder(
      backend=c.backend, mode=settings.mode, truth_path=plan_.paths["truth"],
      eval_images=len(plan_.dedup) if plan_.dedup is not None else 0,
      price_in=c.price_per_mtok_in, price_out=c.price_per_mtok_out,
      num_examples=c.report_examples)
  skipped = records_lib.SkipCounter() if c.skip_bad_inputs else None
  for shard in plan_.shards:
    done = read_outcomes(os.path.join(plan_.journal_dir, os.path.basename(shard)))
    for item in inputs.read_items(shard, skipped):
      if item.index in done:
        builder.add(item, done[item.index])
  result = builder.finish(manifest, skipped=skipped, seconds=seconds)
  result["dead_letters"] = {"dir": plan_.dead_letter_dir, "by_kind": kinds}
  curation_dir = plan_.paths["curation"]
  if storage.is_remote(curation_dir):  # The report writer writes local files: upload them.
    with tempfile.TemporaryDirectory() as tmp:
      report_lib.write(result, tmp, builder.chosen_examples(), plan_.image_root)
      for rel in _files(tmp):
        storage.path(tmp).joinpath(rel).copy(os.path.join(curation_dir, rel), overwrite=True)
  else:
    report_lib.write(result, curation_dir, builder.chosen_examples(), plan_.image_root)
  return result
