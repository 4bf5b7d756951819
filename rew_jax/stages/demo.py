"""`python -m rew_jax demo`: the whole method, in order, on the embedded default world.

    python -m rew_jax demo --workdir runs/demo [--config configs/demo.py:runlocal]

  world → candidates (Entity-WebLI) → curation: the simulated LLM (REW records) and the
  no-LLM top-1 candidate (Entity-WebLI records) → the trimmed vocabulary both models share
  (`demo.trim_vocab`) → pretrain one GiT on each → OVEN validation with KB-constrained
  decoding → fine-tune each on the world's OVEN train splits → OVEN validation again → the
  paper's Table 1 in miniature, every cell with its 95 % interval, the paired REW −
  Entity-WebLI difference with its interval, and loss curves. `:seeds=N` repeats the
  training for N seeds and reports mean ± std.

Every number in the report is measured in the run that writes it. Each stage stamps its
outputs with a hash of its config section and inputs (`rew_jax.workdir`): a rerun reuses
what the same config made (an interrupted demo resumes where it stopped) and redoes what
another config made, so a report never shows old figures as new.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import shutil
import time
from typing import Sequence

import jax
import numpy as np

from rew_jax import config as config_lib
from rew_jax import plot
from rew_jax import train as train_lib
from rew_jax import workdir as workdir_lib
from rew_jax import records as records_lib
from rew_jax.data import oven_records
from rew_jax.data import tokenizers
from rew_jax.data import vocab
from rew_jax.errors import ConfigError
from rew_jax.models import trie as trie_lib
from rew_jax.stages import base
from rew_jax.stages import curate as curate_stage
from rew_jax.stages import demo_report
from rew_jax.stages import world as world_stage

RESULT_NAME = "demo_result.json"
ARM_KEYS = ("records", "backend", "mode", "context", "tasks")


def default_config_path() -> str:
  return config_lib.packaged_config_path("demo.py")


def arms(config) -> dict[str, config_lib.ConfigDict]:
  """The demo's models in `demo.order`: name → its arm (`records`: the record set it trains
  on, W/records_<records>; `backend`, `mode`, `context`: how that set is curated, "" for the
  curation section's own; `tasks`: its task-mixture weights)."""
  out = {}
  for name in config.demo.order:
    if name not in config.demo.arms:
      raise ConfigError(f"demo.order names {name!r}, which demo.arms lacks "
                        f"(arms: {sorted(config.demo.arms)})")
    arm = config.demo.arms[name]
    if sorted(arm) != sorted(ARM_KEYS):
      raise ConfigError(f"demo.arms.{name} needs exactly the keys {ARM_KEYS}, got {sorted(arm)}")
    out[name] = arm
  if config.demo.reference not in out:
    raise ConfigError(f"demo.reference {config.demo.reference!r} is not one of demo.order "
                      f"{tuple(out)}")
  return out


def record_sets(config) -> dict[str, tuple[str, str, str]]:
  """records name → (backend, mode, context) of its curation; arms sharing a record set must
  curate it alike."""
  c = config.curation
  sets: dict[str, tuple[str, str, str]] = {}
  for name, arm in arms(config).items():
    how = (arm.backend or c.backend, arm.mode or c.mode, arm.context or c.context)
    if sets.setdefault(arm.records, how) != how:
      raise ConfigError(f"demo.arms.{name} curates records {arm.records!r} as {how}, another "
                        f"arm as {sets[arm.records]}: give it its own `records` name")
  return sets


def curation_config(config, wd: workdir_lib.Workdir, records: str,
                    how: tuple[str, str, str]) -> config_lib.ConfigDict:
  """The pipeline config of one curation of the demo: its backend, mode, context and its
  records dir."""
  c = copy.deepcopy(config)
  c.curation.backend, c.curation.mode, c.curation.context = how
  c.curation.out_dir = wd.records(records)
  return c


def oven_eval_blocks(config, wd: workdir_lib.Workdir) -> tuple[dict, dict]:
  """(evals, predict) blocks of a train config: OVEN validation on the world, at the end,
  with beam search constrained to the KB's name trie."""
  e = config.eval
  evals = {"oven_val": dict(
      type="oven", pred="decode_rows", every=config.train.total_steps,
      references=[wd.world_oven(s) for s in e.splits], image_dir=wd.world_images,
      mapping=dict(mode="rows", kb_dir=wd.kb_index), pp=e.pp, batch_size=e.batch_size,
      max_examples=e.max_examples)}
  predict = dict(name_trie=wd.kb_file("name_trie.npz"), num_beams=e.num_beams)
  return evals, predict


def train_config(config, wd: workdir_lib.Workdir, name: str, seed: int = 0
                 ) -> config_lib.ConfigDict:
  """The `train` section for one of the demo's models (an arm): its records, tasks and
  evaluators. `seed` counts from the config's seed (0: the config's own)."""
  arm = arms(config)[name]
  c = copy.deepcopy(config.train)
  c.seed += seed
  c.input.seed += seed
  c.input.data_dir = wd.records(arm.records)
  if config.demo.trim_vocab:
    c.model.vocab_ids = vocab_path(wd)
  c.input.tasks.weights = config_lib.ConfigDict(dict(arm.tasks))
  evals, predict = oven_eval_blocks(config, wd)
  c.evals, c.predict = config_lib.ConfigDict(evals), config_lib.ConfigDict(predict)
  return c


def finetune_config(config, wd: workdir_lib.Workdir, name: str, seed: int = 0
                    ) -> config_lib.ConfigDict:
  """The fine-tuning of a pretrained model on the world's OVEN entity and query train splits
  (the records' questions are the prompts), evaluated like the pretrained one."""
  c = train_config(config, wd, name, seed)
  f = config.demo.finetune
  c.init_from = run_dir(wd, "train", name, seed)
  c.input.data_dir = wd.oven_records
  c.input.tasks.weights = dict(entity=1.0, rationale=0.0, qa=0.0, caption=0.0)
  c.total_steps = f.total_steps
  c.log_every = max(1, min(c.log_every, f.total_steps // 4))
  c.evals.oven_val.every = f.total_steps
  c.checkpoint.every = f.total_steps
  c.optim.update(dict(lr=f.lr, warmup_steps=f.warmup_steps))
  return c


def run_dir(wd: workdir_lib.Workdir, phase: str, name: str, seed: int) -> str:
  """W/train_NAME or W/finetune_NAME, with a suffix for the seeds after the first."""
  base_dir = wd.train_run(name) if phase == "train" else wd.finetune_run(name)
  return base_dir if seed == 0 else f"{base_dir}_s{seed}"


def ensure_oven_records(wd: workdir_lib.Workdir, progress: base.Progress) -> str:
  """The world's OVEN entity and query train splits as records, for fine-tuning."""
  digest = workdir_lib.fingerprint("oven_train", workdir_lib.stamp_of(wd.world))
  if not workdir_lib.is_current(wd.oven_records, digest):
    if os.path.isdir(wd.oven_records):
      shutil.rmtree(wd.oven_records)
    manifest = oven_records.oven_to_records(
        [wd.world_oven("entity_train"), wd.world_oven("query_train")], wd.world_images,
        wd.oven_records)
    workdir_lib.write_stamp(wd.oven_records, "oven_records", digest)
    progress.line(f"OVEN train records: {manifest.total} → {wd.oven_records}")
  return wd.oven_records


def vocab_path(wd: workdir_lib.Workdir) -> str:
  return os.path.join(wd.vocab, vocab.FILE_NAME)


def _record_texts(directory: str):
  for r in records_lib.read_records(directory):
    yield from (r.entity_name, r.rationale, r.question)
    for qa in r.qa:
      yield from (qa.question, qa.answer)


def ensure_vocab(config, wd: workdir_lib.Workdir, sources: Sequence[str],
                 progress: base.Progress) -> str:
  """The trimmed vocabulary both demo models share (`rew_jax.data.vocab`): every id of the
  KB's names (the name trie that decoding walks) and of what training reads: the records in
  `sources` and the task mixture's own questions and prompts."""
  tasks = config.train.input.tasks
  digest = workdir_lib.fingerprint(
      ("vocab", list(tasks.entity.generic_questions), tasks.rationale.prompt,
       [tasks[n].prefix for n in sorted(tasks.weights)]),
      workdir_lib.stamp_of(wd.world), *(workdir_lib.stamp_of(d) for d in sources))
  path = vocab_path(wd)
  if workdir_lib.is_current(wd.vocab, digest) and os.path.isfile(path):
    return path
  texts = itertools.chain(tasks.entity.generic_questions, [tasks.rationale.prompt],
                          [tasks[n].prefix for n in sorted(tasks.weights)],
                          *(_record_texts(d) for d in sources))
  ids = vocab.build_ids(texts, tokenizers.load_tokenizer("bert"))
  names = np.asarray(trie_lib.load(wd.kb_file("name_trie.npz")).labels)
  ids = np.union1d(ids, names).astype(np.int32)
  vocab.save_ids(ids, path)
  workdir_lib.write_stamp(wd.vocab, "vocab", digest, size=int(len(ids)))
  progress.line(f"trimmed vocabulary: {len(ids)} of the tokenizer's ids → {path}")
  return path


def train_one(c, directory: str, inputs: str, progress: base.Progress, what: str) -> dict:
  """Trains and evaluates one model, or reuses what the same config and inputs made; returns
  the last evaluation's figures with their intervals."""
  digest = workdir_lib.fingerprint(c, inputs)
  result_path = os.path.join(directory, RESULT_NAME)
  if workdir_lib.is_current(directory, digest) and os.path.isfile(result_path):
    progress.line(f"{what}: reusing {directory} (same config and inputs)")
  else:
    stamp = workdir_lib.read_stamp(directory)
    if stamp is None and os.path.isdir(directory) or stamp and stamp["fingerprint"] != digest:
      shutil.rmtree(directory)  # Another config's run: resuming it would mix the two.
    workdir_lib.write_stamp(directory, "train", digest)
    progress.header(f"{what} ({c.total_steps} steps on {c.input.data_dir})")
    start = time.time()
    out = train_lib.train(c, directory)
    metrics = dict(out["metrics"], seconds=round(time.time() - start, 1))
    with open(result_path, "w") as f:
      json.dump(metrics, f, indent=1)
  return demo_report.cell_intervals(demo_report.eval_result(directory))


def run(config, wd: workdir_lib.Workdir) -> dict:
  """Every stage of the method on the embedded world; returns curation, results and report."""
  progress = base.Progress()
  os.makedirs(wd.root, exist_ok=True)
  if config.demo.compilation_cache and not jax.config.jax_compilation_cache_dir:
    # Every model's train step and evaluation compile to the same programs: later runs
    # (and reruns of the demo) load them from W/jax_cache instead of compiling again.
    # Takes effect when nothing has compiled yet in this process (a fresh CLI run).
    jax.config.update("jax_compilation_cache_dir", os.path.join(wd.root, "jax_cache"))
  models, sets = arms(config), record_sets(config)
  progress.header("world")
  summary = world_stage.ensure(config, wd, progress=progress)
  curation = {}  # Each curation makes (or reuses) the candidates it reads.
  for records, how in sets.items():
    curation[records] = curate_stage.run(curation_config(config, wd, records, how), wd,
                                         redo_changed=True, progress=progress, verbose=False)
  finetune = config.demo.finetune.total_steps > 0
  if finetune:
    ensure_oven_records(wd, progress)
  if config.demo.trim_vocab:
    ensure_vocab(config, wd, [wd.records(n) for n in sets] +
                 ([wd.oven_records] if finetune else []), progress)
  seeds = list(range(config.demo.seeds))  # Offsets from the config's training seed.
  phases = (("before", "train"),) + ((("after", "finetune"),) if finetune else ())
  results = {name: {"before": [], "after": []} for name in models}
  for seed in seeds:
    for name, arm in models.items():
      pre_dir = run_dir(wd, "train", name, seed)
      results[name]["before"].append(train_one(
          train_config(config, wd, name, seed), pre_dir,
          workdir_lib.stamp_of(wd.records(arm.records)) + workdir_lib.stamp_of(wd.vocab),
          progress, f"pretrain {name}, seed +{seed}"))
      if finetune:
        results[name]["after"].append(train_one(
            finetune_config(config, wd, name, seed), run_dir(wd, "finetune", name, seed),
            workdir_lib.stamp_of(pre_dir) + workdir_lib.stamp_of(wd.oven_records), progress,
            f"fine-tune {name} on OVEN train, seed +{seed}"))
  reference = config.demo.reference
  differences = {
      name: {task: {phase: [demo_report.paired_difference(
          run_dir(wd, directory, name, seed), run_dir(wd, directory, reference, seed),
          wd.world_oven(f"{task}_val"), task=task) for seed in seeds]
                    for phase, directory in phases}
             for task in ("entity", "query")}
      for name in models if name != reference}
  labels = {name: curation[arm.records].get("accuracy_vs_truth", {})
            for name, arm in models.items()}
  text = demo_report.markdown(summary, curation, results,
                              [config.train.seed + s for s in seeds], differences, reference,
                              labels=labels,
                              arms={n: dict(a) for n, a in models.items()})
  png = plot.plot_runs({f"{name} ({phase})": run_dir(wd, directory, name, 0)
                        for name in models for phase, directory in phases}, wd.curves)
  text += f"\nLoss curves: {png}. Total demo time {progress.elapsed():.0f} s.\n"
  with open(wd.report_md, "w") as f:
    f.write(text)
  as_json = {name: {phase: [{k: v._asdict() for k, v in cells.items()} for cells in runs]
                    for phase, runs in phases_.items()} for name, phases_ in results.items()}
  with open(wd.report_json, "w") as f:
    json.dump({"world": summary, "curation": curation, "results": as_json, "seeds": seeds,
               "arms": {n: a.to_dict() for n, a in models.items()}, "reference": reference,
               "differences_hm": {
                   name: {task: {phase: [d._asdict() if d else None for d in ds]
                                 for phase, ds in by_phase.items()}
                          for task, by_phase in by_task.items()}
                   for name, by_task in differences.items()},
               "chance_pct": demo_report.chance(summary),
               "seconds": round(progress.elapsed(), 1)}, f, indent=1,
              default=lambda x: x.item() if isinstance(x, np.generic) else str(x))
  progress.line("\n" + text)
  return {"curation": curation, "results": results, "report": text,
          "differences": differences}


def check(config, source: str) -> None:
  """Checks the demo's own sections (the stages check theirs when they run)."""
  config_lib.section(config, "demo", config_lib.ConfigDict(dict(
      arms=config_lib.ConfigDict(), order=(), reference="", seeds=1, trim_vocab=False,
      compilation_cache=False, finetune=config_lib.ConfigDict(dict(
          total_steps=0, lr=0.0, warmup_steps=0)))), source)
  record_sets(config)
  config_lib.section(config, "eval", config_lib.ConfigDict(dict(
      splits=(), batch_size=0, num_beams=0, max_examples=0, pp="")), source)
  config_lib.section(config, "train", train_lib.default_config(), source=source)


def main(argv: Sequence[str]) -> int:
  p = base.parser("demo", __doc__)
  base.add_config(p, default=default_config_path(),
                  sections="world, candidates, curation, train, eval, demo")
  base.add_workdir(p, "where every stage writes (see rew_jax/workdir.py)")
  args, config = base.parse(p, argv)
  check(config, args.config_source)
  run(config, workdir_lib.Workdir(args.workdir))
  return 0
