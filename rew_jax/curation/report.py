"""The curation report: W/curation/report.json and a readable report.md with thumbnails.

Counts per status, correction rate, parse failures by reason, retries and transient errors,
token usage and a cost estimate (when the backend reports usage), how names were resolved,
and a few examples. When ground truth is available (the embedded world), the entity-label
accuracy of the curated records is reported next to that of the raw top-1 candidates (the
Entity-WebLI label), over all images and over labelled records only.
"""

from __future__ import annotations

import collections
import io
import json
import os
from typing import Any, Mapping, Sequence

from rew_jax.curation.core import Item, Outcome

LABELLED = ("kept", "corrected", "candidate")


def _pct(a: int, b: int) -> float:
  return round(100.0 * a / b, 2) if b else 0.0


def _read_truth(path: str) -> dict[str, str]:
  if not path or not os.path.isfile(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return {r["image_id"]: r["entity_id"] for r in map(json.loads, f) if r}


def accuracy(items: Sequence[Item], outcomes: Mapping, truth: Mapping[str, str]) -> dict:
  """Entity-label accuracy of the records and of the top-1 candidates against `truth`."""
  n = rec_ok = labelled = labelled_ok = top1_ok = recall_ok = 0
  for item in items:
    out = outcomes.get((item.shard, item.index))
    if out is None or item.image_id not in truth:
      continue
    t = truth[item.image_id]
    n += 1
    ok = out.status in LABELLED and out.entity_id == t
    rec_ok += ok
    labelled += out.status in LABELLED
    labelled_ok += ok
    top1_ok += bool(item.candidates) and item.candidates[0].entity_id == t
    recall_ok += any(c.entity_id == t for c in item.candidates)
  return {"images_with_truth": n,
          "records_pct": _pct(rec_ok, n),
          "records_labelled_precision_pct": _pct(labelled_ok, labelled),
          "records_labelled_pct": _pct(labelled, n),
          "candidates_top1_pct": _pct(top1_ok, n),
          "candidates_recall_at_k_pct": _pct(recall_ok, n)}


def build(items: Sequence[Item], outcomes: Mapping, *, backend: str, mode: str, manifest,
          truth_path: str = "", price_in: float = 0.0, price_out: float = 0.0,
          skipped=None, seconds: float = 0.0) -> dict[str, Any]:
  outs = [outcomes[(it.shard, it.index)] for it in items if (it.shard, it.index) in outcomes]
  status = collections.Counter(o.status for o in outs)
  failures = collections.Counter(r for o in outs for r in o.parse_failures)
  transient = collections.Counter()
  for o in outs:
    transient.update(o.transient)
  methods = collections.Counter(o.reason for o in outs)
  tin = sum(o.input_tokens for o in outs)
  tout = sum(o.output_tokens for o in outs)
  decided = status["kept"] + status["corrected"]
  report = {
      "backend": backend, "mode": mode,
      "records": manifest.total, "shards": len(manifest.shards),
      "config_hash": manifest.curation_config_hash,
      "counts_by_status": dict(sorted(manifest.counts_by_status.items())),
      "correction_rate_pct": _pct(status["corrected"], decided),
      "with_rationale": sum(bool(o.rationale) for o in outs),
      "with_qa": sum(bool(o.qa) for o in outs),
      "parse_failures": dict(sorted(failures.items())),
      "records_with_parse_failure": sum(bool(o.parse_failures) for o in outs),
      "llm_calls": sum(o.calls for o in outs),
      "retries": sum(o.retries for o in outs),
      "transient_errors": dict(sorted(transient.items())),
      "reasons": dict(sorted(methods.items())),
      "usage": {"input_tokens": tin, "output_tokens": tout,
                "cost_usd": round((tin * price_in + tout * price_out) / 1e6, 4)},
      "mean_latency_s": round(sum(o.latency_s for o in outs) / max(1, len(outs)), 4),
      "skipped_inputs": skipped.total if skipped is not None else 0,
      "seconds": round(seconds, 2),
  }
  truth = _read_truth(truth_path)
  if truth:
    report["accuracy_vs_truth"] = accuracy(items, outcomes, truth)
  return report


def summary_line(report: Mapping[str, Any]) -> str:
  counts = ", ".join(f"{k} {v}" for k, v in report["counts_by_status"].items())
  line = (f"curated {report['records']} records with {report['backend']} ({counts}); "
          f"correction rate {report['correction_rate_pct']}%, "
          f"{report['records_with_parse_failure']} with parse failures, "
          f"{report['retries']} retries")
  acc = report.get("accuracy_vs_truth")
  if acc:
    line += (f"; entity-label accuracy {acc['records_pct']}% (labelled records "
             f"{acc['records_labelled_precision_pct']}%) vs top-1 candidate "
             f"{acc['candidates_top1_pct']}%")
  return line


def _thumbnail(image: bytes, path: str, size: int = 96) -> None:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  img = Image.open(io.BytesIO(image)).convert("RGB")
  img.thumbnail((size, size))
  img.save(path, format="PNG")


def _md_escape(text: str) -> str:
  return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;")[:200]


def write(report: dict, directory: str, items: Sequence[Item], outcomes: Mapping,
          image_root: str, num_examples: int = 6) -> None:
  """report.json + report.md (+ thumbs/): a few examples of each status, first come."""
  from rew_jax.curation import inputs  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.join(directory, "thumbs"), exist_ok=True)
  per_status = collections.defaultdict(list)
  for it in items:
    out = outcomes.get((it.shard, it.index))
    if out is not None and len(per_status[out.status]) < max(1, num_examples // 2):
      per_status[out.status].append((it, out))
  chosen = [x for status in sorted(per_status) for x in per_status[status]][:num_examples]
  examples = []
  for it, out in chosen:
    thumb = os.path.join("thumbs", f"{it.image_id}.png")
    try:
      _thumbnail(inputs.load_image(it, image_root)[0], os.path.join(directory, thumb))
    except Exception:  # A thumbnail is decoration: never fail the report for it.
      thumb = ""
    examples.append({"image_id": it.image_id, "caption": it.caption, "status": out.status,
                     "entity_id": out.entity_id, "entity_name": out.entity_name,
                     "answer": out.answer, "reason": out.reason,
                     "candidates": [c.name for c in it.candidates[:3]],
                     "rationale": out.rationale, "qa": out.qa, "thumbnail": thumb})
  report = dict(report, examples=examples)
  with open(os.path.join(directory, "report.json"), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=1, ensure_ascii=False)
  lines = [f"# Curation report ({report['backend']}, {report['mode']})", "",
           f"{report['records']} records in {report['shards']} shards "
           f"(config {report['config_hash']}), {report['seconds']} s.", "",
           "| status | records | % |", "|---|---:|---:|"]
  for k, v in report["counts_by_status"].items():
    lines.append(f"| {k} | {v} | {_pct(v, report['records'])} |")
  lines += ["", f"- correction rate (corrected / kept+corrected): "
            f"{report['correction_rate_pct']}%",
            f"- with rationale: {report['with_rationale']}, with QA: {report['with_qa']}",
            f"- parse failures: {report['parse_failures'] or 'none'} "
            f"({report['records_with_parse_failure']} records)",
            f"- LLM calls: {report['llm_calls']}, retries: {report['retries']}, "
            f"transient errors: {report['transient_errors'] or 'none'}",
            f"- tokens in/out: {report['usage']['input_tokens']}/"
            f"{report['usage']['output_tokens']}, estimated cost "
            f"${report['usage']['cost_usd']}",
            f"- skipped inputs: {report['skipped_inputs']}"]
  acc = report.get("accuracy_vs_truth")
  if acc:
    lines += ["", "## Entity labels against the world's truth", "",
              "| label source | accuracy over all images | precision of labelled |",
              "|---|---:|---:|",
              f"| top-1 candidate (Entity-WebLI) | {acc['candidates_top1_pct']}% | "
              f"{acc['candidates_top1_pct']}% |",
              f"| curated records | {acc['records_pct']}% | "
              f"{acc['records_labelled_precision_pct']}% "
              f"({acc['records_labelled_pct']}% labelled) |", "",
              f"The truth is among the candidates for {acc['candidates_recall_at_k_pct']}% "
              f"of the {acc['images_with_truth']} images."]
  lines += ["", "## Examples", ""]
  for ex in examples:
    img = f"![{ex['image_id']}]({ex['thumbnail']}) " if ex["thumbnail"] else ""
    lines.append(f"### {ex['image_id']}: {ex['status']} → {_md_escape(ex['entity_name']) or '-'}")
    lines.append(f"{img}caption: “{_md_escape(ex['caption'])}”; model answer: "
                 f"“{_md_escape(ex['answer'])}” ({ex['reason']}); candidates: "
                 f"{', '.join(_md_escape(c) for c in ex['candidates']) or '-'}")
    if ex["rationale"]:
      lines.append(f"\n> {_md_escape(ex['rationale'])}")
    for qa in ex["qa"]:
      lines.append(f"- Q: {_md_escape(qa['question'])} A: {_md_escape(qa['answer'])}")
    lines.append("")
  with open(os.path.join(directory, "report.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
