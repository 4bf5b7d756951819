"""The curation shard engine: what every executor of the `curate` stage runs.

    plan_ = shards.plan(config, workdir, restart)      # state check, dirs; → Plan
    for i in plan_.todo():                             # shards not yet committed
      shards.curate_shard(plan_, i, curator, concurrency=8, backend_name="gemini")
    shards.write_manifest(plan_)                       # once every shard is committed
    report = shards.report(plan_, seconds)             # from the journals + dead letters

The local runner (`run.py`, threads in one process) and the Beam pipeline (`beam.py`:
DirectRunner, DaskRunner, Dataflow) are executors over these functions: they differ only in
where `curate_shard` runs and how its `Curator` is built. So they share the state check,
the journal, the dead letters and the commit, and write byte-identical records.

Workdir state. `W/curation/state.json` holds the hash of what decides the records
(`section.hashed`), that part of the section itself, and the input shards' names and sizes.
A workdir curated under another section or from other candidates is refused, naming the
keys that differ, unless `restart` discards its records, journals and dead letters.

Journal. Input shard i has a journal, `W/curation/journal/<candidates shard>`: one JSON
line per curated record (its `core.Outcome`), written as soon as the record's calls finish.
On a local disk each line is appended and flushed (a killed process loses nothing
journaled); an object store has no appends, so there the journal object is rewritten whole
at most every `REMOTE_JOURNAL_UPLOAD_S` seconds and when the shard's work ends. A rerun
reads the journal, ignores a torn last line (a process killed mid-write; the writer cuts
it off) and curates only the records without an entry: a finished LLM call is never paid
twice. When the shard's work ends its journal is rewritten in input order, one line per
record, however many processes appended to it.

Commit. When every record of a shard has an outcome, the shard is written in input order
from the outcomes (`records.write_shard`: a temporary name renamed, or one object upload):
its existence is the commit, and a rerun skips it. Records whose calls failed transiently
after every retry (`FAILED`) are not journaled: their shard waits for the rerun, which
retries exactly those.

Dead letters. `W/curation/dead_letters/<candidates shard>` lists every input of the shard
that gave no labelled record (`bad_image`, `unresolved`, `failed`), rewritten whole after
each pass over the shard. Every path goes through `rew_jax.storage`: the workdir may be
`gs://`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import time
from typing import Iterator, Sequence

from rew_jax import config as config_lib
from rew_jax import records as records_lib
from rew_jax import storage
from rew_jax.curation import core
from rew_jax.curation import dedup as dedup_lib
from rew_jax.curation import inputs
from rew_jax.curation import report as report_lib
from rew_jax.curation import section
from rew_jax.curation.backends.base import TransientError
from rew_jax.errors import ConfigError, UserError

JOURNAL_DIR = "journal"
DEAD_LETTER_DIR = "dead_letters"
STATE_NAME = "state.json"
FAILED = "failed"  # The outcome of a record whose calls failed transiently max_attempts times.
REMOTE_JOURNAL_UPLOAD_S = 10.0  # How often a gs:// journal is rewritten while work goes on.


class IncompleteRunError(UserError):
  """Some records could not be curated this time (transient failures); rerun to finish."""


# ------------------------------------------------------------------------------ the plan


@dataclasses.dataclass(frozen=True)
class Plan:
  """What a run works on, decided once by the driver; pickled to Beam's workers."""
  config: dict        # The whole config, as a plain dict.
  paths: dict         # section.paths_of(...), the same on every machine.
  kb_source: str      # The Wiki6M file.
  kb_index: str       # The KB index directory; may be gs://.
  image_root: str
  names: tuple        # Output shard names, one per input shard.
  shards: tuple       # Input shard paths.
  config_hash: str
  # The evaluation images' hashes (`curation.dedup`), hashed once by the driver; None: off.
  dedup: dedup_lib.EvalIndex | None = None

  @property
  def curation(self) -> config_lib.ConfigDict:
    return config_lib.ConfigDict(self.config["curation"])

  @property
  def journal_dir(self) -> str:
    return os.path.join(self.paths["curation"], JOURNAL_DIR)

  @property
  def dead_letter_dir(self) -> str:
    return os.path.join(self.paths["curation"], DEAD_LETTER_DIR)

  def journal_path(self, i: int) -> str:
    return os.path.join(self.journal_dir, os.path.basename(self.shards[i]))

  def dead_letter_path(self, i: int) -> str:
    return os.path.join(self.dead_letter_dir, os.path.basename(self.shards[i]))

  def out_path(self, i: int) -> str:
    return os.path.join(self.paths["out"], self.names[i])

  def items(self, i: int, skipped: records_lib.SkipCounter | None = None) -> list[core.Item]:
    """Shard i's items; with `curation.skip_bad_inputs`, bad lines count in `skipped`."""
    if skipped is None and self.config["curation"]["skip_bad_inputs"]:
      skipped = records_lib.SkipCounter()
    return inputs.read_items(self.shards[i], skipped)

  def todo(self) -> list[int]:
    """The shards not committed yet."""
    return [i for i in range(len(self.shards)) if not storage.exists(self.out_path(i))]


def run_state(config, shards: Sequence[str]) -> dict:
  """What a workdir's records depend on: the curation section and the input shards."""
  return {"config_hash": section.curation_hash(config), "backend": config.curation.backend,
          "inputs": [[os.path.basename(p), storage.getsize(p)] for p in shards],
          "curation": section.hashed(config)}


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict) and v:
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def differing_keys(old: dict, new: dict) -> list[str]:
  """`curation.key (old → new)` for each key whose value differs, sorted."""
  a, b = _flat(old), _flat(new)
  return [f"curation.{k} ({a.get(k, '(absent)')!r} → {b.get(k, '(absent)')!r})"
          for k in sorted(set(a) | set(b)) if a.get(k, object()) != b.get(k, object())]


def refuse_other_state(path: str, state: dict) -> None:
  """Refuses a curation dir whose saved state (`path`) names another section or other
  candidate shards: resuming there would mix two runs' records."""
  if not storage.exists(path):
    return
  old = json.loads(storage.read_text(path))
  where = os.path.dirname(path)
  if old.get("config_hash") != state["config_hash"]:
    keys = differing_keys(old["curation"], state["curation"]) if "curation" in old else []
    named = f"{', '.join(keys)}; " if keys else ""
    raise ConfigError(
        f"{where} holds records curated with another config ({named}hash "
        f"{old.get('config_hash')}, now {state['config_hash']}); use a new --workdir or pass "
        "--restart to discard them")
  if old.get("inputs") != state["inputs"]:
    raise ConfigError(f"{where} holds records of other candidate shards (names or sizes "
                      "differ); use a new --workdir or pass --restart to discard them")


def check_state(plan_: Plan, state: dict, restart: bool) -> None:
  """Refuses another run's curation dir (unless `restart`, which empties it), then saves
  this run's state and removes temporary files of killed local writers."""
  path = os.path.join(plan_.paths["curation"], STATE_NAME)
  out = plan_.paths["out"]
  if restart:
    for d in (out, plan_.journal_dir, plan_.dead_letter_dir):
      storage.rmtree(d)
  else:
    refuse_other_state(path, state)
  for d in (plan_.paths["curation"], out, plan_.journal_dir, plan_.dead_letter_dir):
    storage.makedirs(d)
  storage.write_text(path, json.dumps(state, indent=1))
  if not storage.is_remote(out):  # Object uploads leave no temporary files.
    for pattern in (f".*{records_lib.SHARD_SUFFIX}.tmp-*", f".{records_lib.MANIFEST_NAME}.tmp-*"):
      for tmp in storage.glob(out, pattern):
        storage.remove(tmp)


def plan(config, workdir: str, restart: bool = False) -> Plan:
  """Checks the section and the workdir's state, makes the output dirs; → the plan."""
  c = config.curation
  core.Settings.from_config(c)  # A config error now, not on a worker.
  paths = section.paths_of(c, workdir)
  shards = inputs.candidate_shards(paths["candidates"])
  kb_source, kb_index = section.kb_paths(c, paths)
  state = run_state(config, shards)
  image_root = c.image_root or paths["world"]
  p = Plan(config=config.to_dict(), paths=paths, kb_source=kb_source, kb_index=kb_index,
           image_root=image_root,
           names=tuple(records_lib.shard_name(i) for i in range(len(shards))),
           shards=tuple(shards), config_hash=state["config_hash"],
           dedup=dedup_lib.EvalIndex.from_config(section.dedup_config(c, image_root)))
  check_state(p, state, restart)
  return p


def open_kb(plan_: Plan) -> inputs.KBLookup:
  """The KB lookups, building what is missing. A gs:// index is worked on in a local
  mirror (memory-mapped tables) and what was built is uploaded."""
  mirror = storage.Mirror(plan_.kb_index, tag="curation")
  mirror.pull()
  kb = inputs.KBLookup.open(plan_.kb_source, mirror.local)
  mirror.push()
  return kb


# ------------------------------------------------------------------------------ journal


def _line(out: core.Outcome) -> str:
  return json.dumps(out.to_json(), ensure_ascii=False) + "\n"


def read_journal(path: str) -> dict[int, core.Outcome]:
  """Outcomes by line index (the first entry wins); a torn last line is ignored, and so
  are `FAILED` entries (which journals written by earlier versions of the Beam runner
  hold): those records are to be retried."""
  if not storage.exists(path):
    return {}
  text = storage.read_text(path)
  done = {}
  for n, line in enumerate(text[:text.rfind("\n") + 1].splitlines(), 1):
    if not line.strip():
      continue
    try:
      out = core.Outcome.from_json(json.loads(line))
    except (ValueError, TypeError) as e:
      raise inputs.InputError(f"{path}:{n}: not a journal entry ({e}); pass --restart to "
                              "discard the run") from None
    if out.status != FAILED:
      done.setdefault(out.index, out)
  return done


def write_journal(path: str, items: Sequence[core.Item],
                  done: dict[int, core.Outcome]) -> None:
  """The journal rewritten whole: one line per item with an outcome, in input order."""
  storage.write_text(path, "".join(_line(done[it.index]) for it in items if it.index in done))


class Journal:
  """Appends a shard's outcomes as they come; one writer (the executor's main thread).

  It starts from `done` (what `read_journal` found), rewriting the file with those entries
  only, which cuts off a torn last line. Local: each entry is then appended and flushed.
  Remote: the object is rewritten whole at most every `upload_every_s` and on `close`.
  """

  def __init__(self, path: str, done: dict[int, core.Outcome],
               upload_every_s: float = REMOTE_JOURNAL_UPLOAD_S):
    self.path = path
    self._lines = [_line(done[i]) for i in sorted(done)]
    storage.write_text(path, "".join(self._lines))
    self._remote = storage.is_remote(path)
    self._every = upload_every_s
    self._uploaded = time.monotonic()
    self._pending = False
    self._f = None if self._remote else storage.path(path).open("a", encoding="utf-8")

  def append(self, out: core.Outcome) -> None:
    if self._f is not None:
      self._f.write(_line(out))
      self._f.flush()  # Reaches the OS: survives kill -9 (fsync would add power loss).
      return
    self._lines.append(_line(out))
    self._pending = True
    if time.monotonic() - self._uploaded >= self._every:
      self._upload()

  def _upload(self) -> None:
    storage.write_text(self.path, "".join(self._lines))
    self._uploaded, self._pending = time.monotonic(), False

  def close(self) -> None:
    if self._f is not None:
      self._f.close()
    elif self._pending:
      self._upload()


def journal_todo(journal_path: str, done: dict[int, core.Outcome],
                 items: Sequence[core.Item]) -> list[core.Item]:
  """The items a shard's journal has no outcome for; a journal written for other inputs is
  an error (resuming it would pair outcomes with the wrong images)."""
  by_index = {it.index: it for it in items}
  for index, out in done.items():
    if index not in by_index or by_index[index].image_id != out.image_id:
      raise inputs.InputError(f"{journal_path}: entry for line {index + 1} is image "
                              f"{out.image_id!r}, but the input has another; the candidates "
                              "changed since this run started (use --restart)")
  return [it for it in items if it.index not in done]


# ------------------------------------------------------------------------------ records


def screen(item: core.Item, image_root: str, dedup: dedup_lib.EvalIndex | None = None):
  """→ (image, mime, None) for an item to curate, or (None, None, outcome) for one that is
  left out before any LLM call: an undecodable image, or a near-copy of an evaluation
  image (with `dedup`)."""
  try:
    image, mime = inputs.load_image(item, image_root, check=True)
  except inputs.BadImageError as e:  # Web data: a counted skip, never a record.
    return None, None, core.bad_image_outcome(item, str(e))
  if dedup is not None:
    match = dedup.match(image, f"{item.shard}:{item.index + 1} ({item.image_id})")
    if match is not None:
      return None, None, core.eval_duplicate_outcome(item, match.eval_image, match.distance)
  return image, mime, None


def failed_outcome(item: core.Item, error: Exception) -> core.Outcome:
  return core.Outcome(index=item.index, image_id=item.image_id, status=FAILED,
                      reason=f"{type(error).__name__}: {error}")


def curate_each(items: Sequence[core.Item], curator: core.Curator, image_root: str = "", *,
                concurrency: int = 1, dedup: dedup_lib.EvalIndex | None = None
                ) -> Iterator[tuple[int, core.Outcome]]:
  """(position in `items`, outcome) as each record finishes, `concurrency` at a time. A bad
  image, a copy of an evaluation image and exhausted retries (`FAILED`) are outcomes; any
  other error stops the work and propagates."""
  if not items:
    return

  def work(item):
    image, mime, left_out = screen(item, image_root, dedup)
    if left_out is not None:
      return left_out
    try:
      return curator.curate(item, image, mime)
    except TransientError as e:
      return failed_outcome(item, e)

  with concurrent.futures.ThreadPoolExecutor(max(1, min(concurrency, len(items)))) as pool:
    futures = {pool.submit(work, it): n for n, it in enumerate(items)}
    try:
      for fut in concurrent.futures.as_completed(futures):
        yield futures[fut], fut.result()
    finally:  # An error, or a consumer that stopped: start nothing more.
      for f in futures:
        f.cancel()


def dead_letter(item: core.Item, out: core.Outcome) -> dict | None:
  """The quarantine entry of an outcome that gave no labelled record, else None."""
  if out.status not in (core.BAD_IMAGE, "unresolved", FAILED):
    return None
  return {"shard": item.shard, "line": item.index + 1, "image_id": item.image_id,
          "kind": out.status, "reason": out.reason or ",".join(out.parse_failures),
          "retried_on_rerun": out.status == FAILED}


def dead_letter_lines(items: Sequence[core.Item], outcomes: dict[int, core.Outcome]
                      ) -> list[dict]:
  """A shard's dead letters, in input order."""
  return [d for it in items if it.index in outcomes
          if (d := dead_letter(it, outcomes[it.index]))]


def commit_shard(path: str, items: Sequence[core.Item], outcomes: dict[int, core.Outcome],
                 image_root: str, backend: str) -> None:
  """Writes the output shard (atomically) in input order from the outcomes; items whose
  image did not decode or copies an evaluation image are left out."""
  def records():
    for item in items:
      if outcomes[item.index].status in core.NOT_RECORDS:
        continue
      image, _ = inputs.load_image(item, image_root)
      yield core.to_record(item, image, outcomes[item.index], backend)
  records_lib.write_shard(path, records())


def curate_shard(plan_: Plan, i: int, curator: core.Curator, *, concurrency: int,
                 backend_name: str, progress=None) -> dict:
  """Curates what shard i's journal lacks, then writes its journal (in input order), its
  dead letters and, unless a record failed, the shard; → {name, records, curated, failed}.
  `progress` (a tqdm bar) counts journaled records."""
  items = plan_.items(i)
  journal_path = plan_.journal_path(i)
  done = read_journal(journal_path)
  todo = journal_todo(journal_path, done, items)
  failed: dict[int, core.Outcome] = {}
  if todo:
    journal = Journal(journal_path, done)
    try:
      for _, out in curate_each(todo, curator, plan_.image_root, concurrency=concurrency,
                                dedup=plan_.dedup):
        if out.status == FAILED:
          failed[out.index] = out
          continue
        journal.append(out)
        done[out.index] = out
        if progress is not None:
          progress.update(1)
    finally:
      journal.close()
  write_journal(journal_path, items, done)
  letters = dead_letter_lines(items, {**done, **failed})
  storage.write_text(plan_.dead_letter_path(i),
                     "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in letters))
  if not failed:
    commit_shard(plan_.out_path(i), items, done, plan_.image_root, backend_name)
  return {"name": plan_.names[i], "records": len(items), "curated": len(todo),
          "failed": len(failed)}


def write_manifest(plan_: Plan) -> bool:
  """The manifest, once every shard is committed (a shard with failed records is not)."""
  if plan_.todo():
    return False
  manifest = records_lib.describe_shards(plan_.paths["out"], list(plan_.names),
                                         source=plan_.config["curation"]["source"],
                                         curation_config_hash=plan_.config_hash)
  manifest.save(plan_.paths["out"])
  return True


# ------------------------------------------------------------------------------ report


def report(plan_: Plan, seconds: float) -> dict:
  """The report from the journals and the dead letters, written to the curation dir;
  raises IncompleteRunError when failed records kept shards uncommitted."""
  c = plan_.curation
  kinds: dict[str, int] = {}
  first_failed = ""
  for i in range(len(plan_.shards)):
    path = plan_.dead_letter_path(i)
    for line in (storage.read_text(path).splitlines() if storage.exists(path) else ()):
      d = json.loads(line)
      kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
      if d["kind"] == FAILED and not first_failed:
        first_failed = f"{d['shard']}:{d['line']} ({d['image_id']}): {d['reason']}"
  if not storage.exists(os.path.join(plan_.paths["out"], records_lib.MANIFEST_NAME)):
    raise IncompleteRunError(
        f"{kinds.get(FAILED, 0)} records still failed after {c.max_attempts} attempts "
        f"(first: {first_failed}; all: {plan_.dead_letter_dir}); the others are saved: rerun "
        "the same command to retry them")
  manifest = records_lib.Manifest.load(plan_.paths["out"])
  settings = core.Settings.from_config(c)
  builder = report_lib.ReportBuilder(
      backend=c.backend, mode=settings.mode, context=settings.prompt_context,
      truth_path=plan_.paths["truth"],
      eval_images=len(plan_.dedup) if plan_.dedup is not None else 0,
      price_in=c.price_per_mtok_in, price_out=c.price_per_mtok_out,
      num_examples=c.report_examples)
  skipped = records_lib.SkipCounter() if c.skip_bad_inputs else None
  for i in range(len(plan_.shards)):
    done = read_journal(plan_.journal_path(i))
    for item in plan_.items(i, skipped):
      if item.index in done:
        builder.add(item, done[item.index])
  result = builder.finish(manifest, skipped=skipped, seconds=seconds)
  upstream = section.candidates_manifest(plan_.paths)
  # What the candidates step left out before curation: bad input records, and samples the
  # downloader could not fetch (img2dataset's sidecars), so the report covers every input.
  result["candidates_inputs"] = {"skipped": upstream.get("skipped", 0),
                                 "upstream_failed": upstream.get("upstream_failed", {})}
  result["dead_letters"] = {"dir": plan_.dead_letter_dir, "by_kind": kinds}
  report_lib.write(result, plan_.paths["curation"], builder.chosen_examples(),
                   plan_.image_root)
  return result
