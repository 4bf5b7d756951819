"""`python -m rew_jax demo`: the whole method, in order, on the embedded default world.

  world → candidates (Entity-WebLI) → curation: the simulated LLM (REW records) and the
  no-LLM top-1 candidate (Entity-WebLI records) → train one GiT on each → OVEN validation
  with KB-constrained decoding → a report comparing both, with loss curves.

Every number in the report is measured in the run that writes it. Stages whose outputs are
already complete in the workdir (world, candidates, curated shards, trained checkpoints) are
reused, so an interrupted demo resumes where it stopped.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from typing import Sequence

import numpy as np

from rew_jax import config as config_lib
from rew_jax import plot
from rew_jax import train as train_lib
from rew_jax.curation import run as curation_run
from rew_jax.data import synthetic

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "demo.py")
# (name in the report, curation backend; None: the config's LLM backend).
DATASETS = (("entity_webli", "top1_candidate"), ("rew", None))


def ensure_world(config, workdir: str) -> tuple[str, dict]:
  """Generates the world into workdir/world unless the same config already did."""
  world_dir = os.path.join(workdir, "world")
  summary_path = os.path.join(world_dir, "world.json")
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      existing = json.load(f)
    if existing.get("config") == config.to_dict():
      return world_dir, existing
  return world_dir, synthetic.generate(config, world_dir)


def curate_both(config, workdir: str) -> dict[str, dict]:
  """REW records (LLM) and Entity-WebLI records (top-1 candidate) from the same candidates."""
  reports = {}
  for name, backend in DATASETS:
    c = copy.deepcopy(config)
    c.curation.backend = backend or config.curation.backend
    c.curation.out_dir = os.path.join(workdir, f"records_{name}")
    print(f"== curation: {name} ({c.curation.backend}) ==", flush=True)
    reports[name] = curation_run.curate(c, workdir, verbose=False)
  return reports


def oven_eval_blocks(config, workdir: str) -> tuple[dict, dict]:
  """(evals, predict) blocks of a train config: OVEN validation on the world, at the end,
  with beam search constrained to the KB's name trie."""
  world_dir, kb_dir = os.path.join(workdir, "world"), os.path.join(workdir, "kb")
  evals = {"oven_val": dict(
      type="oven", pred="decode_rows", every=config.train.total_steps,
      references=[os.path.join(world_dir, "oven", f"oven_{s}.jsonl") for s in config.eval.splits],
      image_dir=os.path.join(world_dir, "images"), mapping=dict(mode="rows", kb_dir=kb_dir),
      pp=config.eval.pp, batch_size=config.eval.batch_size,
      max_examples=config.eval.max_examples)}
  predict = dict(name_trie=os.path.join(kb_dir, "name_trie.npz"),
                 num_beams=config.eval.num_beams)
  return evals, predict


def train_both(config, workdir: str) -> dict[str, dict]:
  results = {}
  for name, _ in DATASETS:
    c = copy.deepcopy(config.train)
    c.input.data_dir = os.path.join(workdir, f"records_{name}")
    if name == "rew":
      c.input.tasks.weights = config.rew_task_weights
    evals, predict = oven_eval_blocks(config, workdir)
    c.evals, c.predict = config_lib.ConfigDict(evals), config_lib.ConfigDict(predict)
    train_dir = os.path.join(workdir, f"train_{name}")
    metrics_path = os.path.join(train_dir, "demo_result.json")
    if os.path.exists(metrics_path):  # Trained and evaluated by an earlier run.
      with open(metrics_path) as f:
        results[name] = json.load(f)
      continue
    print(f"== train: {name} ({c.total_steps} steps on {c.input.data_dir}) ==", flush=True)
    start = time.time()
    out = train_lib.train(c, train_dir)
    results[name] = dict(out["metrics"], seconds=round(time.time() - start, 1))
    with open(metrics_path, "w") as f:
      json.dump(results[name], f, indent=1)
  return results


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
            "query unseen | query HM | final HM | final loss | train s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for name, r in results.items():
    g = lambda k: r.get(f"oven_val/{k}")
    lines.append(f"| {name} | {_fmt(g('entity_seen'))} | {_fmt(g('entity_unseen'))} | "
                 f"{_fmt(g('entity_score'))} | {_fmt(g('query_seen'))} | "
                 f"{_fmt(g('query_unseen'))} | {_fmt(g('query_score'))} | "
                 f"{_fmt(g('final_score'))} | {r.get('loss', float('nan')):.3f} | "
                 f"{r.get('seconds', '—')} |")
  rew, base = results.get("rew", {}), results.get("entity_webli", {})
  a, b = rew.get("oven_val/entity_score"), base.get("oven_val/entity_score")
  if a is not None and b is not None:
    verdict = ("ahead of" if a > b else "not ahead of")
    lines += ["", f"The REW-trained model is {verdict} the Entity-WebLI baseline on the "
              f"entity split HM ({a:.2f} vs {b:.2f})."]
  return "\n".join(lines) + "\n"


def run(config, workdir: str) -> dict:
  os.makedirs(workdir, exist_ok=True)
  start = time.time()
  print("== world ==", flush=True)
  world_dir, summary = ensure_world(config.world, workdir)
  print(synthetic.format_summary(summary), flush=True)
  curation_run.ensure_candidates(config, workdir)
  curation = curate_both(config, workdir)
  results = train_both(config, workdir)
  text = report(summary, curation, results)
  png = plot.plot_runs({name: os.path.join(workdir, f"train_{name}") for name, _ in DATASETS},
                       os.path.join(workdir, "curves.png"))
  text += f"\nLoss curves: {png}. Total demo time {time.time() - start:.0f} s.\n"
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write(text)
  with open(os.path.join(workdir, "report.json"), "w") as f:
    json.dump({"world": summary, "curation": curation, "results": results}, f, indent=1,
              default=lambda x: x.item() if isinstance(x, np.generic) else str(x))
  print("\n" + text, flush=True)
  return {"curation": curation, "results": results, "report": text}


def main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(prog="python -m rew_jax demo", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  config_lib.add_config_arguments(parser, default=DEFAULT_CONFIG)
  args, config = config_lib.parse_stage_args(parser, argv)
  run(config, args.workdir)
  return 0
