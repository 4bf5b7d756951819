"""`python -m rew_jax demo`: the whole method, in order, on the embedded default world.

    python -m rew_jax demo --workdir runs/demo [--config configs/demo.py:runlocal]

  world → candidates (Entity-WebLI) → curation: the simulated LLM (REW records) and the
  no-LLM top-1 candidate (Entity-WebLI records) → train one GiT on each → OVEN validation
  with KB-constrained decoding → a report comparing both, with loss curves.

Every number in the report is measured in the run that writes it. Each stage stamps its
outputs with a hash of its config section and inputs (`rew_jax.workdir`): a rerun reuses
what the same config made (an interrupted demo resumes where it stopped) and redoes what
another config made, so a report never shows old figures as new.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from typing import Sequence

import numpy as np

from rew_jax import config as config_lib
from rew_jax import plot
from rew_jax import train as train_lib
from rew_jax import workdir as workdir_lib
from rew_jax.data import synthetic
from rew_jax.stages import base
from rew_jax.stages import candidates as candidates_stage
from rew_jax.stages import curate as curate_stage
from rew_jax.stages import world as world_stage

# (name in the report, curation backend; None: the config's LLM backend).
DATASETS = (("entity_webli", "top1_candidate"), ("rew", None))
RESULT_NAME = "demo_result.json"


def default_config_path() -> str:
  return config_lib.packaged_config_path("demo.py")


def curation_config(config, wd: workdir_lib.Workdir, name: str, backend: str | None):
  """The pipeline config of one curation of the demo: its backend and its records dir."""
  c = copy.deepcopy(config)
  c.curation.backend = backend or config.curation.backend
  c.curation.out_dir = wd.records(name)
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


def train_config(config, wd: workdir_lib.Workdir, name: str) -> config_lib.ConfigDict:
  """The `train` section for one of the demo's models: its records, tasks and evaluators."""
  c = copy.deepcopy(config.train)
  c.input.data_dir = wd.records(name)
  if name == "rew":
    c.input.tasks.weights = config.demo.rew_task_weights
  evals, predict = oven_eval_blocks(config, wd)
  c.evals, c.predict = config_lib.ConfigDict(evals), config_lib.ConfigDict(predict)
  return c


def train_one(config, wd: workdir_lib.Workdir, name: str, progress: base.Progress) -> dict:
  """Trains and evaluates one model, or reuses the result the same config and records made."""
  c = train_config(config, wd, name)
  run_dir = wd.train_run(name)
  digest = workdir_lib.fingerprint(c, workdir_lib.stamp_of(wd.records(name)))
  result_path = os.path.join(run_dir, RESULT_NAME)
  if workdir_lib.is_current(run_dir, digest) and os.path.isfile(result_path):
    with open(result_path) as f:
      progress.line(f"train {name}: reusing {run_dir} (same config and records)")
      return json.load(f)
  stamp = workdir_lib.read_stamp(run_dir)
  if stamp is None and os.path.isdir(run_dir) or stamp and stamp["fingerprint"] != digest:
    shutil.rmtree(run_dir)  # Another config's run: resuming it would mix the two.
  workdir_lib.write_stamp(run_dir, "train", digest)
  progress.header(f"train: {name} ({c.total_steps} steps on {c.input.data_dir})")
  start = time.time()
  out = train_lib.train(c, run_dir)
  result = dict(out["metrics"], seconds=round(time.time() - start, 1))
  with open(result_path, "w") as f:
    json.dump(result, f, indent=1)
  return result


def _fmt(value) -> str:
  return "—" if value is None else f"{value:.2f}"


def report(summary: dict, curation: dict[str, dict], results: dict[str, dict]) -> str:
  lines = ["# rew_jax demo report", "",
           synthetic.format_summary(summary).replace("\n", "  \n"), "",
           "## Curation (label accuracy against the world's truth)", "",
           "| records | backend | labelled | label accuracy (all images) | precision of labelled |",
           "|---|---|---:|---:|---:|"]
  for name, rep in curation.items():
    acc = rep.get("accuracy_vs_truth", {})
    lines.append(f"| {name} | {rep['backend']} | {acc.get('records_labelled_pct')}% | "
                 f"{acc.get('records_pct')}% | {acc.get('records_labelled_precision_pct')}% |")
  first = next(iter(curation.values())).get("accuracy_vs_truth", {})
  lines += ["", f"Top-1 candidate accuracy {first.get('candidates_top1_pct')}%, recall@k "
            f"{first.get('candidates_recall_at_k_pct')}%. REW status counts: "
            f"{curation['rew']['counts_by_status']}.", "",
            "## OVEN validation (top-1 %, KB-constrained beam search)", "",
            "| trained on | entity seen | entity unseen | entity HM | query seen | "
            "query unseen | query HM | final HM | final loss |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for name, r in results.items():
    g = lambda k: r.get(f"oven_val/{k}")  # pylint: disable=cell-var-from-loop
    lines.append(f"| {name} | {_fmt(g('entity_seen'))} | {_fmt(g('entity_unseen'))} | "
                 f"{_fmt(g('entity_score'))} | {_fmt(g('query_seen'))} | "
                 f"{_fmt(g('query_unseen'))} | {_fmt(g('query_score'))} | "
                 f"{_fmt(g('final_score'))} | {r.get('loss', float('nan')):.3f} |")
  rew, baseline = results.get("rew", {}), results.get("entity_webli", {})
  a, b = rew.get("oven_val/entity_score"), baseline.get("oven_val/entity_score")
  if a is not None and b is not None:
    verdict = "ahead of" if a > b else "not ahead of"
    lines += ["", f"The REW-trained model is {verdict} the Entity-WebLI baseline on the "
              f"entity split HM ({a:.2f} vs {b:.2f})."]
  return "\n".join(lines) + "\n"


def run(config, wd: workdir_lib.Workdir) -> dict:
  """Every stage of the method on the embedded world; returns curation, results and report."""
  progress = base.Progress()
  os.makedirs(wd.root, exist_ok=True)
  progress.header("world")
  summary = world_stage.ensure(config, wd, progress=progress)
  candidates_stage.ensure(config, wd, progress=progress)
  curation = {}
  for name, backend in DATASETS:
    curation[name] = curate_stage.run(curation_config(config, wd, name, backend), wd,
                                      redo_changed=True, progress=progress, verbose=False)
  results = {name: train_one(config, wd, name, progress) for name, _ in DATASETS}
  text = report(summary, curation, results)
  png = plot.plot_runs({name: wd.train_run(name) for name, _ in DATASETS}, wd.curves)
  text += f"\nLoss curves: {png}. Total demo time {progress.elapsed():.0f} s.\n"
  with open(wd.report_md, "w") as f:
    f.write(text)
  with open(wd.report_json, "w") as f:
    json.dump({"world": summary, "curation": curation, "results": results}, f, indent=1,
              default=lambda x: x.item() if isinstance(x, np.generic) else str(x))
  progress.line("\n" + text)
  return {"curation": curation, "results": results, "report": text}


def check(config, source: str) -> None:
  """Checks the demo's own sections (the stages check theirs when they run)."""
  base.section(config, "demo", config_lib.ConfigDict(dict(
      rew_task_weights=config_lib.ConfigDict())), source)
  base.section(config, "eval", config_lib.ConfigDict(dict(
      splits=(), batch_size=0, num_beams=0, max_examples=0, pp="")), source)
  base.section(config, "train", train_lib.default_config(), source)


def main(argv: Sequence[str]) -> int:
  p = base.parser("demo", __doc__)
  base.add_config(p, default=default_config_path(),
                  sections="world, candidates, curation, train, eval, demo")
  base.add_workdir(p, "where every stage writes (see rew_jax/workdir.py)")
  args, config = base.parse(p, argv)
  check(config, args.config_source)
  run(config, workdir_lib.Workdir(args.workdir))
  return 0
