"""The curation runner: candidates → LLM curation → REW record shards + report.

Run by the `curate` stage (`rew_jax/stages/curate.py`). Its inputs and outputs are the
`curation` section's paths or, by default, the workdir's (`rew_jax.workdir`): candidates
from W/candidates, records to W/records (one shard per input shard, plus manifest.json),
journals, state.json and the report to W/curation (beside a custom `curation.out_dir=D`: D
for the records, D_curation for the rest).

Exactly once, resumable. Input shard i becomes output shard i. Each curated record is
appended to the shard's journal (one JSON line, flushed) as soon as its LLM calls finish;
when every line of the shard has a journal entry, the shard is written under a temporary
name and renamed (`records.write_shard`): the rename is the commit. After `kill -9` at any
moment a rerun of the same command skips committed shards, reuses journaled outcomes
(ignoring a torn last line) and calls the LLM only for records without one; so every input
line appears exactly once in the output and no finished LLM call is paid twice. The
manifest is written once all shards are committed. A workdir curated under a different
config is refused (state.json holds the config hash) unless `--restart` is given.

Records whose calls still fail transiently after all retries are not written: the run
finishes the other records, then exits with an error; rerunning retries just those.
"""

from __future__ import annotations

import concurrent.futures
import glob
import json
import os
import shutil
import time
from typing import Sequence

from rew_jax import config as config_lib
from rew_jax import records as records_lib
from rew_jax import registry
from rew_jax import storage
from rew_jax import workdir as workdir_lib
from rew_jax.curation import core
from rew_jax.curation import dedup as dedup_lib
from rew_jax.curation import inputs
from rew_jax.curation import report as report_lib
from rew_jax.curation.backends.base import TransientError
from rew_jax.errors import ConfigError, UserError

JOURNAL_DIR = "journal"
STATE_NAME = "state.json"


class IncompleteRunError(UserError):
  """Some records could not be curated this time (transient failures); rerun to finish."""


def default_config() -> config_lib.ConfigDict:
  """The `curation` section with every key a config may set."""
  c = config_lib.ConfigDict()
  c.backend = "simulated"
  c.mode = "one_call"            # one_call | multi_call | direct (the ablation)
  # What correction prompts show beside the candidate names: full (caption + Wikipedia
  # summaries) | caption | summaries | none; "": the mode's own (full; none for direct).
  c.context = ""
  c.num_qa = 3
  c.concurrency = 8              # Records in flight at once.
  c.rate_limit_per_s = 0.0       # Calls per second over all threads; 0: unlimited.
  c.timeout_s = 60.0             # Per call.
  c.max_attempts = 6             # Per call, on 429/5xx/timeouts.
  c.backoff_initial_s = 1.0
  c.backoff_max_s = 60.0
  c.parse_retries = 1            # Re-asks after an unparsable reply.
  c.summary_chars = 400          # Wikipedia text per candidate in the prompt; 0: none.
  # Web images that are near-copies of evaluation images are left out before the LLM call
  # and counted in the report (rew_jax/curation/dedup.py). Relative paths are under the
  # image root. Empty image_dirs and references: no deduplication.
  c.dedup = dedup_lib.default_config()
  c.prompts = config_lib.ConfigDict(dict(verify="", rationale="", qa="", one_call="",
                                         direct=""))  # "" keeps the default template.
  c.candidates_dir = ""          # Default: W/candidates.
  c.out_dir = ""                 # Default: W/records (state and report: W/curation).
  c.kb_source = ""               # Default: the candidates manifest's, else W/world/kb/...
  c.kb_index_dir = ""            # Default: the candidates manifest's, else W/kb.
  c.image_root = ""              # For relative image paths; default: W/world.
  c.truth_path = ""              # Default: W/world/truth/web_truth.jsonl when present.
  c.skip_bad_inputs = False
  c.price_per_mtok_in = 0.0      # USD per million tokens, for the report's cost estimate.
  c.price_per_mtok_out = 0.0
  c.report_examples = 6
  c.source = "webli"             # Written into the manifest.
  return c


def paths_of(c, workdir: str) -> dict[str, str]:
  """Inputs and outputs of a curation: the `curation` section's paths, else the workdir's."""
  wd = workdir_lib.Workdir(workdir)
  return {
      "world": wd.world,
      "candidates": c.candidates_dir or wd.candidates,
      "out": c.out_dir or wd.records(),
      # State, journals and report beside a custom out_dir, so that several curations
      # (e.g. baseline and REW) share a workdir.
      "curation": workdir_lib.curation_dir_for(c.out_dir) if c.out_dir else wd.curation(),
      "kb_source": c.kb_source or wd.world_kb,
      "kb_index": c.kb_index_dir or wd.kb_index,
      "truth": c.truth_path or wd.world_truth,
  }


def backend_options(config, paths: dict[str, str] | None = None) -> dict:
  """The options of the configured backend (`config.curation.<backend>`). An empty
  `kb_path` option (the KB a simulated LLM knows; "none" for none) defaults to the
  curation's KB."""
  c = config.curation
  section = c.get(c.backend, None)
  opts = dict(section.to_dict() if hasattr(section, "to_dict") else section or {})
  if paths and "kb_path" in opts and not opts["kb_path"]:
    opts["kb_path"] = paths["kb_source"]
  return opts


def make_backend(config, paths: dict[str, str] | None = None):
  return registry.CURATION_BACKENDS.get(config.curation.backend)(
      **backend_options(config, paths))


def curation_hash(config) -> str:
  """Hash of what decides the records (not concurrency, rate limits or paths)."""
  c = config.curation.to_dict()
  for k in ("concurrency", "rate_limit_per_s", "report_examples", "timeout_s", "max_attempts",
            "backoff_initial_s", "backoff_max_s"):
    c.pop(k, None)
  # Keys added since: left at their neutral value they leave older workdirs' hash unchanged.
  for k, neutral in (("context", ""),):
    if c.get(k) == neutral:
      c.pop(k)
  if not dedup_lib.enabled(c.get("dedup")):
    c.pop("dedup", None)
  return records_lib.config_hash(c)


def run_state(config, shards: Sequence[str]) -> dict:
  """What a workdir's records depend on: the curation config and the input shards."""
  return {"config_hash": curation_hash(config), "backend": config.curation.backend,
          "inputs": [[os.path.basename(p), os.path.getsize(p)] for p in shards]}


# ------------------------------------------------------------------------------ journal


def read_journal(path: str) -> dict[int, core.Outcome]:
  """Outcomes by line index; a torn last line (killed mid-write) is cut off the file."""
  if not os.path.exists(path):
    return {}
  with open(path, "rb") as f:
    data = f.read()
  end = data.rfind(b"\n") + 1
  if end < len(data):
    with open(path, "r+b") as f:
      f.truncate(end)
  done = {}
  for line in data[:end].splitlines():
    if line.strip():
      out = core.Outcome.from_json(json.loads(line))
      done.setdefault(out.index, out)
  return done


class Journal:
  """Append-only outcome log of one shard; one writer (the runner's main thread)."""

  def __init__(self, path: str):
    self.path = path
    self._f = open(path, "a", encoding="utf-8")

  def append(self, out: core.Outcome) -> None:
    self._f.write(json.dumps(out.to_json(), ensure_ascii=False) + "\n")
    self._f.flush()  # Reaches the OS: survives kill -9 (fsync would add power loss).

  def close(self) -> None:
    self._f.close()


# ------------------------------------------------------------------------------ the runner


def refuse_other_state(path: str, state: dict) -> None:
  """Refuses a curation dir whose saved state (`path`, local or gs://) names another config
  or other candidate shards: resuming there would mix two runs' records."""
  if not storage.exists(path):
    return
  old = json.loads(storage.read_text(path))
  where = os.path.dirname(path)
  if old.get("config_hash") != state["config_hash"]:
    raise ConfigError(
        f"{where} holds records curated with another config (hash "
        f"{old.get('config_hash')}, now {state['config_hash']}); use a new --workdir or pass "
        "--restart to discard them")
  if old.get("inputs") != state["inputs"]:
    raise ConfigError(f"{where} holds records of other candidate shards (names or sizes "
                      "differ); use a new --workdir or pass --restart to discard them")


def _check_state(path: str, state: dict, restart: bool, out_dir: str, journal_dir: str):
  if not restart:
    refuse_other_state(path, state)
  if restart:
    for d in (out_dir, journal_dir):
      shutil.rmtree(d, ignore_errors=True)
  os.makedirs(out_dir, exist_ok=True)
  os.makedirs(journal_dir, exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(state, f, indent=1)
  os.replace(path + ".tmp", path)
  # Temporary shards of a killed writer.
  for tmp in (glob.glob(os.path.join(out_dir, f".*{records_lib.SHARD_SUFFIX}.tmp-*")) +
              glob.glob(os.path.join(out_dir, f"{records_lib.MANIFEST_NAME}.tmp-*"))):
    os.remove(tmp)


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


DEAD_LETTER_DIR = "dead_letters"
FAILED = "failed"  # The outcome of a record whose calls failed transiently max_attempts times.


def failed_outcome(item: core.Item, error: Exception) -> core.Outcome:
  return core.Outcome(index=item.index, image_id=item.image_id, status=FAILED,
                      reason=f"{type(error).__name__}: {error}")


def dead_letter(item: core.Item, out: core.Outcome) -> dict | None:
  """The quarantine entry of an outcome that gave no labelled record, else None."""
  if out.status not in (core.BAD_IMAGE, "unresolved", FAILED):
    return None
  return {"shard": item.shard, "line": item.index + 1, "image_id": item.image_id,
          "kind": out.status, "reason": out.reason or ",".join(out.parse_failures),
          "retried_on_rerun": out.status == FAILED}


def dead_letter_lines(items: Sequence[core.Item], outcomes: dict[int, core.Outcome]
                      ) -> list[dict]:
  """A shard's dead letters, in input order (both runners write these files)."""
  return [d for it in items if it.index in outcomes
          if (d := dead_letter(it, outcomes[it.index]))]


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


def curate_shard(items: Sequence[core.Item], curator: core.Curator, image_root: str,
                 journal_path: str, concurrency: int, progress=None,
                 dedup: dedup_lib.EvalIndex | None = None
                 ) -> tuple[dict[int, core.Outcome], list[core.Outcome]]:
  """Curates the items that have no journal entry yet; → (all outcomes, the `failed`
  outcomes of items whose calls failed transiently, which are not journaled)."""
  done = read_journal(journal_path)
  todo = journal_todo(journal_path, done, items)
  failures = []
  if not todo:
    return done, failures
  journal = Journal(journal_path)

  def work(item):
    image, mime, left_out = screen(item, image_root, dedup)
    return left_out or curator.curate(item, image, mime)

  try:
    with concurrent.futures.ThreadPoolExecutor(max(1, concurrency)) as pool:
      futures = {pool.submit(work, it): it for it in todo}
      for fut in concurrent.futures.as_completed(futures):
        item = futures[fut]
        try:
          out = fut.result()
        except TransientError as e:
          failures.append(failed_outcome(item, e))
          continue
        except BaseException:
          for f in futures:
            f.cancel()
          raise
        journal.append(out)
        done[out.index] = out
        if progress is not None:
          progress.update(1)
  finally:
    journal.close()
  return done, failures


def commit_shard(path: str, items: Sequence[core.Item], outcomes: dict[int, core.Outcome],
                 image_root: str, backend: str) -> None:
  """Writes the output shard (atomically) in input order from the journaled outcomes;
  items whose image did not decode or copies an evaluation image are left out."""
  def records():
    for item in items:
      if outcomes[item.index].status in core.NOT_RECORDS:
        continue
      image, _ = inputs.load_image(item, image_root)
      yield core.to_record(item, image, outcomes[item.index], backend)
  records_lib.write_shard(path, records())


def _candidates_manifest(paths: dict[str, str]) -> dict:
  path = os.path.join(paths["candidates"], "manifest.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def dedup_config(c, image_root: str):
  """`curation.dedup` with its relative paths under the image root (None when absent)."""
  d = c.get("dedup", None)
  if not dedup_lib.enabled(d):
    return None
  under = lambda p: p if not p or os.path.isabs(p) else os.path.join(image_root, p)
  d = config_lib.ConfigDict(d.to_dict() if hasattr(d, "to_dict") else dict(d))
  d.image_dirs = tuple(under(p) for p in d.image_dirs)
  d.references = tuple(under(p) for p in d.references)
  d.reference_image_dir = under(d.reference_image_dir)
  return d


def kb_paths(c, paths: dict[str, str]) -> tuple[str, str]:
  """(Wiki6M file, index dir): from the config, else the ones the candidates step used."""
  kb = _candidates_manifest(paths).get("kb", {})
  return (c.kb_source or kb.get("path") or paths["kb_source"],
          c.kb_index_dir or kb.get("index_dir") or paths["kb_index"])


def curate(config, workdir: str, *, restart: bool = False, backend=None,
           verbose: bool = True) -> dict:
  """Runs (or resumes) curation of W/candidates into REW records; returns the report."""
  c = config.curation
  settings = core.Settings.from_config(c)
  paths = paths_of(c, workdir)
  for key in ("candidates", "out", "curation", "kb_index"):
    storage.require_local(paths[key], f"curation {key}")
  journal_dir = os.path.join(paths["curation"], JOURNAL_DIR)
  os.makedirs(paths["curation"], exist_ok=True)
  shards = inputs.candidate_shards(paths["candidates"])
  state = run_state(config, shards)
  _check_state(os.path.join(paths["curation"], STATE_NAME), state, restart, paths["out"],
               journal_dir)
  backend = backend or make_backend(config, paths)
  kb = inputs.KBLookup.open(*kb_paths(c, paths))
  curator = core.Curator(backend, kb, settings, core.RateLimiter(c.rate_limit_per_s))
  image_root = c.image_root or paths["world"]
  skipped = records_lib.SkipCounter() if c.skip_bad_inputs else None
  dedup = dedup_lib.EvalIndex.from_config(dedup_config(c, image_root))

  start = time.time()
  builder = report_lib.ReportBuilder(
      backend=c.backend, mode=settings.mode, truth_path=paths["truth"],
      eval_images=len(dedup) if dedup is not None else 0,
      price_in=c.price_per_mtok_in, price_out=c.price_per_mtok_out,
      num_examples=c.report_examples)
  failures, names = [], []
  letters: dict[str, int] = {}
  dead_letter_dir = os.path.join(paths["curation"], DEAD_LETTER_DIR)
  os.makedirs(dead_letter_dir, exist_ok=True)
  progress = None
  try:
    if verbose:
      import tqdm  # pylint: disable=g-import-not-at-top
      progress = tqdm.tqdm(desc=f"curate ({c.backend})", unit=" records", mininterval=2)
    for i, shard in enumerate(shards):
      items = inputs.read_items(shard, skipped)
      name = records_lib.shard_name(i)
      names.append(name)
      out_path = os.path.join(paths["out"], name)
      journal_path = os.path.join(journal_dir, os.path.basename(shard))
      if os.path.exists(out_path):
        outcomes = read_journal(journal_path)
      else:
        outcomes, shard_failures = curate_shard(items, curator, image_root, journal_path,
                                                c.concurrency, progress, dedup)
        failures += [(os.path.basename(shard), f) for f in shard_failures]
        if not shard_failures:
          commit_shard(out_path, items, outcomes, image_root, backend.name)
        outcomes = {**outcomes, **{f.index: f for f in shard_failures}}
      shard_letters = dead_letter_lines(items, outcomes)
      _write_lines(os.path.join(dead_letter_dir, os.path.basename(shard)), shard_letters)
      for d in shard_letters:
        letters[d["kind"]] = letters.get(d["kind"], 0) + 1
      for it in items:
        if it.index in outcomes and outcomes[it.index].status != FAILED:
          builder.add(it, outcomes[it.index])
  finally:
    if progress is not None:
      progress.close()
    backend.close()
  if failures:
    shard_name, first = failures[0]
    raise IncompleteRunError(
        f"{len(failures)} records still failed after {c.max_attempts} attempts (first: "
        f"{shard_name}:{first.index + 1} ({first.image_id}): {first.reason}; all: "
        f"{dead_letter_dir}); the others are saved: rerun the same command to retry them")

  manifest = records_lib.describe_shards(paths["out"], names, source=c.source,
                                         curation_config_hash=state["config_hash"])
  manifest.save(paths["out"])
  report = builder.finish(manifest, skipped=skipped, seconds=time.time() - start)
  report["dead_letters"] = {"dir": dead_letter_dir, "by_kind": letters}
  report_lib.write(report, paths["curation"], builder.chosen_examples(), image_root)
  return report


def _write_lines(path: str, rows: Sequence[dict]) -> None:
  """A JSON-lines file, written whole (a rename), so a killed run leaves the old one."""
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
  os.replace(path + ".tmp", path)
