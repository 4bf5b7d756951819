"""The demo's report: the paper's Table 1 in miniature, every cell with its 95 % interval.

Rows: each record set (Entity-WebLI top-1 candidates, REW) before and after fine-tuning on
the world's OVEN train splits. Cells: OVEN validation top-1 per split and bucket, the split
harmonic means and the final one, each as `value [low, high]` (Wilson intervals; harmonic
means bounded by the harmonic means of the bounds, see `rew_jax.evaluators.intervals`) or,
over several seeds, `mean ± std`. The verdict compares REW with Entity-WebLI on their paired
entity-HM difference per seed (both answer the same validation questions; a bootstrap over
the questions gives its 95 % interval, `intervals.paired_hm_difference`) and claims a
difference only when every seed's interval excludes zero. The curation section is measured
against the world's truth by the curation report, the only code that reads it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

from rew_jax.data import oven_files
from rew_jax.data import synthetic
from rew_jax.evaluators import intervals
from rew_jax.evaluators import oven_metric

CELLS = (("entity", "seen"), ("entity", "unseen"), ("entity", "hm"), ("query", "seen"),
         ("query", "unseen"), ("query", "hm"), ("final", "hm"))
PHASES = ("before", "after")


def _last_eval(run_dir: str, evaluator: str) -> str:
  root = os.path.join(run_dir, "eval", evaluator)
  steps = sorted((int(d.split("_")[1]) for d in os.listdir(root) if d.startswith("step_")))
  return os.path.join(root, f"step_{steps[-1]}")


def eval_result(run_dir: str, evaluator: str = "oven_val") -> dict:
  """The full OVEN score (with counts) of a run's last evaluation."""
  with open(os.path.join(_last_eval(run_dir, evaluator), "metrics.json")) as f:
    return json.load(f)


def paired_difference(run_a: str, run_b: str, references: str, evaluator: str = "oven_val",
                      task: str = "entity") -> intervals.Interval | None:
  """The `task` split's HM (entity or query) of run_a minus run_b's on the questions both
  predicted, with its 95 % paired-bootstrap interval; None when a bucket has no such
  question."""
  paths = [os.path.join(_last_eval(r, evaluator), f"predictions_{task}.jsonl")
           for r in (run_a, run_b)]
  if not all(os.path.isfile(p) for p in paths):  # No question of this split was evaluated.
    return None
  preds = [{p["data_id"]: p["pred_entity_id"] for p in oven_files.read_predictions(path)}
           for path in paths]
  right: dict[str, list[list[bool]]] = {"seen": [[], []], "unseen": [[], []]}
  for ref in oven_files.read_references(references):
    bucket = oven_metric.bucket_of(ref["data_split"])
    if (bucket is None or oven_metric.task_of(ref["data_split"]) != task or
        not all(ref["data_id"] in p for p in preds)):
      continue
    for k, p in enumerate(preds):
      right[bucket][k].append(p[ref["data_id"]] == ref["entity_id"])
  if not all(right[b][0] for b in right):
    return None
  return intervals.paired_hm_difference(right["seen"][0], right["unseen"][0],
                                        right["seen"][1], right["unseen"][1])


def cell_intervals(result: Mapping[str, Any]) -> dict[str, intervals.Interval]:
  """OVEN score → {"entity_seen": Interval, ..., "final_hm": Interval}."""
  out = {}
  for split, counts in result["counts"].items():
    task, bucket = split.split("_")[0], split.rsplit("_", 1)[1]
    n = counts["references"]
    acc = result[f"{task}_result"][bucket]
    out[f"{task}_{bucket}"] = intervals.wilson(round(acc * n / 100), n)
  for task in ("entity", "query"):
    if f"{task}_seen" in out and f"{task}_unseen" in out:
      out[f"{task}_hm"] = intervals.harmonic_interval(out[f"{task}_seen"],
                                                      out[f"{task}_unseen"])
  if "entity_hm" in out and "query_hm" in out:
    out["final_hm"] = intervals.harmonic_interval(out["entity_hm"], out["query_hm"])
  return out


def chance(summary: Mapping[str, Any]) -> dict[str, float]:
  """Chance levels in percent: a uniform guess over the KB's visual entities, and over the
  entities of the category the entity question names."""
  per = summary["entities"]["per_category"]
  visual = summary["entities"]["visual"]
  return {"uniform": 100 / visual,
          "within_category": 100 * sum(1 / n for n in per.values()) / len(per)}


def _cell(values: Sequence[intervals.Interval]) -> str:
  if len(values) == 1:
    return str(values[0])
  mean, std = intervals.mean_std([v.value for v in values])
  return f"{mean:.1f} ± {std:.1f}"


def verdict(differences: Sequence[intervals.Interval | None], phase: str, name: str,
            reference: str, task: str = "entity") -> str:
  """Whether arm `name` is ahead of `reference` on the `task` HM in every seed, beyond the
  95 % interval of their paired difference (`paired_difference`, one per seed)."""
  where = f"{phase} fine-tuning"
  known = [d for d in differences if d is not None]
  if not known:
    return f"{where}: {task} HM, {name} minus {reference}: not measured (no question asked)."
  per_seed = ", ".join(f"{d.value:+.1f} [{d.low:+.1f}, {d.high:+.1f}]" for d in known)
  head = (f"{where}: {task} HM, {name} minus {reference} (95 % paired-bootstrap interval "
          f"over the questions), per seed: {per_seed}; ")
  if known and len(known) == len(differences) and all(d.low > 0 for d in known):
    return head + f"{name} is ahead in every seed ({len(known)})."
  if known and len(known) == len(differences) and all(d.high < 0 for d in known):
    return head + f"{name} is behind in every seed ({len(known)})."
  return head + "an interval includes zero (or the seeds disagree): no difference is claimed."


def _label_cell(acc: Mapping[str, Any]) -> str:
  """Label accuracy over all images with its Wilson interval."""
  n = acc.get("images_with_truth", 0)
  if not n:
    return "—"
  return str(intervals.wilson(round(acc["records_pct"] * n / 100), n))


def markdown(summary: Mapping[str, Any], curation: Mapping[str, Mapping[str, Any]],
             results: Mapping[str, Mapping[str, list[dict]]], seeds: Sequence[int],
             differences: Mapping[str, Mapping[str, Mapping[str, Sequence]]], reference: str,
             labels: Mapping[str, Mapping[str, Any]], arms: Mapping[str, Mapping[str, Any]]
             ) -> str:
  """results: arm → phase → one dict of Intervals per seed; differences: arm → task → phase
  → its paired HM difference from the `reference` arm per seed; labels: arm → the label
  accuracy of its records (the curation report's `accuracy_vs_truth`)."""
  odds = chance(summary)
  lines = ["# rew_jax demo report", "",
           synthetic.format_summary(summary).replace("\n", "  \n"), "",
           "## Curation (label accuracy against the world's truth, measured)", "",
           "| records | backend, mode, context | labelled | label accuracy (all images) | "
           "precision of labelled | generic / lookalike / abstained / concept / "
           "hallucinated (% of images) |", "|---|---|---:|---:|---:|---|"]
  for name, rep in curation.items():
    acc = rep.get("accuracy_vs_truth", {})
    modes = acc.get("failure_modes_pct", {}).get("records", {})
    how = (f"{rep['backend']} (no LLM)" if not rep["llm_calls"] else
           f"{rep['backend']}, {rep['mode']}, {rep.get('context') or 'default'}")
    lines.append(
        f"| {name} | {how} | {acc.get('records_labelled_pct')}% | {_label_cell(acc)} | "
        f"{acc.get('records_labelled_precision_pct')}% | " +
        (" / ".join(f"{modes.get(m, 0):.1f}" for m in (
            "generic", "lookalike", "abstained", "concept", "hallucinated")) or "—") + " |")
  first = next(iter(curation.values())).get("accuracy_vs_truth", {})
  lines += ["", f"Top-1 candidate accuracy {first.get('candidates_top1_pct')}%, recall@k "
            f"{first.get('candidates_recall_at_k_pct')}%.", "",
            "## OVEN validation: top-1 %" + (" before and after fine-tuning on OVEN train"
                                              if any(p.get("after") for p in results.values())
                                              else ""), "",
            ("Each cell: value [95 % interval]." if len(seeds) == 1 else
             f"Each cell: mean ± std over seeds {list(seeds)}.") +
            f" Chance: {odds['uniform']:.1f} % (a uniform guess over the KB's "
            f"{summary['entities']['visual']} visual entities), {odds['within_category']:.1f} % "
            "within the category the question names.", "",
            "| model (records; tasks) | label accuracy | fine-tuned | entity seen | "
            "entity unseen | entity HM | query seen | query unseen | query HM | final HM |",
            "|---|---:|---|" + "---:|" * len(CELLS)]
  for name, phases in results.items():
    arm = arms[name]
    tasks = "+".join(t for t, w in sorted(dict(arm["tasks"]).items()) if w)
    for phase in PHASES:
      per_seed = phases.get(phase, [])
      if not per_seed:
        continue
      cells = [_cell([s[f"{t}_{b}"] for s in per_seed]) if f"{t}_{b}" in per_seed[0] else "—"
               for t, b in CELLS]
      lines.append(f"| {name} ({arm['records']}; {tasks}) | "
                   f"{_label_cell(labels.get(name, {}))} | "
                   f"{'yes' if phase == 'after' else 'no'} | " + " | ".join(cells) + " |")
  lines += ["", f"Paired differences from {reference} (both answer the same questions):", ""]
  for name, by_task in differences.items():
    for task, by_phase in by_task.items():
      lines += [f"- {verdict(ds, phase, name, reference, task)}"
                for phase, ds in by_phase.items()]
  return "\n".join(lines) + "\n"
