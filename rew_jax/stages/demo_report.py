"""The demo's report: the paper's Table 1 in miniature, every cell with its 95 % interval.

Rows: each record set (Entity-WebLI top-1 candidates, REW) before and after fine-tuning on
the world's OVEN train splits. Cells: OVEN validation top-1 per split and bucket, the split
harmonic means and the final one, each as `value [low, high]` (Wilson intervals; harmonic
means bounded by the harmonic means of the bounds, see `rew_jax.evaluators.intervals`) or,
over several seeds, `mean ± std`. The curation section is measured against the world's truth
by the curation report, the only code that reads it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

from rew_jax.data import synthetic
from rew_jax.evaluators import intervals

CELLS = (("entity", "seen"), ("entity", "unseen"), ("entity", "hm"), ("query", "seen"),
         ("query", "unseen"), ("query", "hm"), ("final", "hm"))
PHASES = ("before", "after")


def eval_result(run_dir: str, evaluator: str = "oven_val") -> dict:
  """The full OVEN score (with counts) of a run's last evaluation."""
  root = os.path.join(run_dir, "eval", evaluator)
  steps = sorted((int(d.split("_")[1]) for d in os.listdir(root) if d.startswith("step_")))
  with open(os.path.join(root, f"step_{steps[-1]}", "metrics.json")) as f:
    return json.load(f)


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


def verdict(results: Mapping[str, Mapping[str, list[dict]]], phase: str) -> str:
  """Whether REW is ahead on the entity HM beyond the intervals, in every seed."""
  rew, base = results["rew"][phase], results["entity_webli"][phase]
  ahead = [intervals.ahead(r["entity_hm"], b["entity_hm"]) for r, b in zip(rew, base)]
  behind = [intervals.ahead(b["entity_hm"], r["entity_hm"]) for r, b in zip(rew, base)]
  where = f"{phase} fine-tuning"
  if all(ahead):
    return (f"{where}: the REW-trained model is ahead of the Entity-WebLI baseline on the "
            f"entity HM beyond the 95 % intervals ({len(ahead)} seed(s)).")
  if all(behind):
    return (f"{where}: the REW-trained model is behind the Entity-WebLI baseline on the "
            f"entity HM beyond the 95 % intervals ({len(ahead)} seed(s)).")
  return (f"{where}: the entity-HM intervals of REW and Entity-WebLI overlap (or the seeds "
          "disagree); no difference is claimed.")


def markdown(summary: Mapping[str, Any], curation: Mapping[str, Mapping[str, Any]],
             results: Mapping[str, Mapping[str, list[dict]]], seeds: Sequence[int]) -> str:
  """results: name → phase → one dict of Intervals per seed."""
  odds = chance(summary)
  lines = ["# rew_jax demo report", "",
           synthetic.format_summary(summary).replace("\n", "  \n"), "",
           "## Curation (label accuracy against the world's truth, measured)", "",
           "| records | backend | labelled | label accuracy (all images) | precision of "
           "labelled | fixed similar_wrong captions | fixed irrelevant captions |",
           "|---|---|---:|---:|---:|---:|---:|"]
  for name, rep in curation.items():
    acc = rep.get("accuracy_vs_truth", {})
    kinds = acc.get("by_caption_kind", {})
    lines.append(
        f"| {name} | {rep['backend']} | {acc.get('records_labelled_pct')}% | "
        f"{acc.get('records_pct')}% | {acc.get('records_labelled_precision_pct')}% | "
        f"{kinds.get('similar_wrong', {}).get('records_pct', '—')}% | "
        f"{kinds.get('irrelevant', {}).get('records_pct', '—')}% |")
  first = next(iter(curation.values())).get("accuracy_vs_truth", {})
  lines += ["", f"Top-1 candidate accuracy {first.get('candidates_top1_pct')}%, recall@k "
            f"{first.get('candidates_recall_at_k_pct')}%.", "",
            "## OVEN validation: top-1 % before and after fine-tuning on OVEN train", "",
            ("Each cell: value [95 % interval]." if len(seeds) == 1 else
             f"Each cell: mean ± std over seeds {list(seeds)}.") +
            f" Chance: {odds['uniform']:.1f} % (a uniform guess over the KB's "
            f"{summary['entities']['visual']} visual entities), {odds['within_category']:.1f} % "
            "within the category the question names.", "",
            "| trained on | fine-tuned | entity seen | entity unseen | entity HM | query seen | "
            "query unseen | query HM | final HM |", "|---|---|" + "---:|" * len(CELLS)]
  for name, phases in results.items():
    for phase in PHASES:
      per_seed = phases.get(phase, [])
      if not per_seed:
        continue
      cells = [_cell([s[f"{t}_{b}"] for s in per_seed]) if f"{t}_{b}" in per_seed[0] else "—"
               for t, b in CELLS]
      lines.append(f"| {name} | {'yes' if phase == 'after' else 'no'} | " + " | ".join(cells) +
                   " |")
  lines += [""] + [verdict(results, phase) for phase in PHASES
                   if all(results[n].get(phase) for n in ("rew", "entity_webli"))]
  return "\n".join(lines) + "\n"
