"""The curation report: W/curation/report.json and a readable report.md with thumbnails.

Counts per status, correction rate, parse failures by reason, retries and transient errors,
token usage and a cost estimate (when the backend reports usage), how names were resolved,
and a few examples. When ground truth is available (the embedded world), the entity-label
accuracy of the curated records is reported next to that of the raw top-1 candidates (the
Entity-WebLI label), over all images and over labelled records only, and per caption noise
kind (`caption_kind` of truth/web_truth.jsonl: correct, similar_wrong, irrelevant,
generic): how often curation kept a right caption's label and fixed a wrong one. With the
world's entities (truth/entities.jsonl beside it) the audit says why a variant wins: label
accuracy per entity-frequency bucket (the true entity's number of web images: head ≥ 100,
torso 20–99, tail < 20) and every wrong label by failure mode:

  abstained     no label (the model said "none", or the record failed)
  generic       a generic concept ("Tower") where the image shows a specific entity
  lookalike     the true entity's look-alike pair, or one of its category one attribute off
  concept       a non-visual entity ("Negative equity"): an irrelevant caption followed
  hallucinated  any other entity

This module is the only reader of the world's truth: curation backends never see it.
"""

from __future__ import annotations

import collections
import io
import json
import os
from typing import Any, Mapping, Sequence

from rew_jax import storage
from rew_jax.curation.core import BAD_IMAGE, EVAL_DUPLICATE, Item, Outcome

LABELLED = ("kept", "corrected", "candidate")


def _pct(a: int, b: int) -> float:
  return round(100.0 * a / b, 2) if b else 0.0


def _read_truth(path: str) -> dict[str, tuple[str, str]]:
  """image id → (true entity id, caption noise kind or "")."""
  if not path or not storage.isfile(path):
    return {}
  return {r["image_id"]: (r["entity_id"], r.get("caption_kind") or "")
          for r in map(json.loads, storage.read_text(path).splitlines()) if r}


FAILURE_MODES = ("abstained", "generic", "lookalike", "concept", "hallucinated")
FREQUENCY_BUCKETS = (("head", 100), ("torso", 20), ("tail", 0))  # (name, minimum images)


def _read_entities(truth_path: str) -> dict[str, dict]:
  """entity id → its truth row (truth/entities.jsonl beside `truth_path`), if present."""
  path = os.path.join(os.path.dirname(truth_path), "entities.jsonl") if truth_path else ""
  if not path or not storage.isfile(path):
    return {}
  return {r["entity_id"]: r for r in map(json.loads, storage.read_text(path).splitlines()) if r}


def failure_mode(label: str | None, truth: dict, entities: Mapping[str, dict]) -> str:
  """Why `label` (an entity id, or None: no label) is not the true entity `truth`."""
  if not label:
    return "abstained"
  got = entities.get(label)
  if got is None:
    return "hallucinated"
  if got["category"] == "concept":
    return "concept"
  if got.get("generic"):
    return "generic"
  if label == truth.get("lookalike_of"):
    return "lookalike"
  look = ("shape", "colour", "pattern")
  if got["category"] == truth["category"] and sum(got[a] != truth[a] for a in look) <= 1:
    return "lookalike"
  return "hallucinated"


class ReportBuilder:
  """Accumulates the report one (item, outcome) at a time: memory stays O(truth + examples),
  so the report of a web-scale run costs no more than a pass over its journals."""

  def __init__(self, *, backend: str, mode: str, context: str = "", truth_path: str = "",
               price_in: float = 0.0,
               price_out: float = 0.0, num_examples: int = 6, eval_images: int = 0):
    self.backend, self.mode, self.context = backend, mode, context
    self.price_in, self.price_out = price_in, price_out
    self.truth = _read_truth(truth_path)
    self.entities = _read_entities(truth_path) if self.truth else {}
    frequency = collections.Counter(t for t, _ in self.truth.values())
    self.bucket = {e: next(name for name, low in FREQUENCY_BUCKETS if n >= low)
                   for e, n in frequency.items()}
    self.acc_by_bucket: dict[str, collections.Counter] = collections.defaultdict(
        collections.Counter)
    self.modes = collections.Counter()
    self.top1_modes = collections.Counter()
    self.num_examples = num_examples
    self.status = collections.Counter()
    self.failures = collections.Counter()
    self.transient = collections.Counter()
    self.reasons = collections.Counter()
    self.sums = collections.Counter()
    self.acc = collections.Counter()
    self.acc_by_kind: dict[str, collections.Counter] = collections.defaultdict(
        collections.Counter)
    self.examples: dict[str, list] = collections.defaultdict(list)  # status → [(item, out)]
    self.bad_images = 0
    self.bad_image_examples: list[str] = []  # The first few messages.
    self.eval_images = eval_images  # How many evaluation images deduplication compared with.
    self.duplicates = 0
    self.duplicate_examples: list[str] = []

  def add(self, item: Item, out: Outcome) -> None:
    s = self.sums
    if out.status == BAD_IMAGE:  # A skipped input: no record, no LLM call, no accuracy.
      self.bad_images += 1
      if len(self.bad_image_examples) < 5:
        self.bad_image_examples.append(out.reason)
      return
    if out.status == EVAL_DUPLICATE:  # Removed before curation: no record, no LLM call.
      self.duplicates += 1
      if len(self.duplicate_examples) < 5:
        self.duplicate_examples.append(f"{out.image_id}: {out.reason}")
      return
    self.status[out.status] += 1
    self.failures.update(out.parse_failures)
    self.transient.update(out.transient)
    self.reasons[out.reason] += 1
    s["n"] += 1
    s["with_rationale"] += bool(out.rationale)
    s["with_qa"] += bool(out.qa)
    s["with_parse_failure"] += bool(out.parse_failures)
    s["calls"] += out.calls
    s["retries"] += out.retries
    s["input_tokens"] += out.input_tokens
    s["output_tokens"] += out.output_tokens
    s["latency_s"] += out.latency_s
    if len(self.examples[out.status]) < max(1, self.num_examples // 2):
      self.examples[out.status].append((item, out))
    truth = self.truth.get(item.image_id)
    if truth is not None:
      t, kind = truth
      labelled = out.status in LABELLED
      groups = [self.acc] + ([self.acc_by_kind[kind]] if kind else [])
      if t in self.entities:
        groups.append(self.acc_by_bucket[self.bucket[t]])
        label = out.entity_id if labelled else None
        top1 = item.candidates[0].entity_id if item.candidates else None
        if label != t:
          self.modes[failure_mode(label, self.entities[t], self.entities)] += 1
        if top1 != t:
          self.top1_modes[failure_mode(top1, self.entities[t], self.entities)] += 1
      for a in groups:
        a["n"] += 1
        a["labelled"] += labelled
        a["right"] += labelled and out.entity_id == t
        a["top1"] += bool(item.candidates) and item.candidates[0].entity_id == t
        a["recall"] += any(c.entity_id == t for c in item.candidates)

  @staticmethod
  def _figures(a: collections.Counter) -> dict:
    return {"images_with_truth": a["n"],
            "records_pct": _pct(a["right"], a["n"]),
            "records_labelled_precision_pct": _pct(a["right"], a["labelled"]),
            "records_labelled_pct": _pct(a["labelled"], a["n"]),
            "candidates_top1_pct": _pct(a["top1"], a["n"]),
            "candidates_recall_at_k_pct": _pct(a["recall"], a["n"])}

  def accuracy(self) -> dict:
    """Entity-label accuracy of the records and of the top-1 candidates against the truth,
    overall and per caption noise kind (`by_caption_kind`)."""
    figures = self._figures(self.acc)
    if self.acc_by_kind:
      figures["by_caption_kind"] = {k: self._figures(self.acc_by_kind[k])
                                    for k in sorted(self.acc_by_kind)}
    if self.entities:
      figures["by_frequency"] = {
          name: dict(self._figures(self.acc_by_bucket[name]),
                     entities=sum(b == name for b in self.bucket.values()))
          for name, _ in FREQUENCY_BUCKETS if self.acc_by_bucket[name]["n"]}
      n = self.acc["n"]
      figures["failure_modes_pct"] = {
          "records": {m: _pct(self.modes[m], n) for m in FAILURE_MODES},
          "candidates_top1": {m: _pct(self.top1_modes[m], n) for m in FAILURE_MODES}}
    return figures

  def finish(self, manifest, *, skipped=None, seconds: float = 0.0) -> dict[str, Any]:
    s, status = self.sums, self.status
    tin, tout = s["input_tokens"], s["output_tokens"]
    report = {
        "backend": self.backend, "mode": self.mode, "context": self.context,
        "records": manifest.total, "shards": len(manifest.shards),
        "config_hash": manifest.curation_config_hash,
        "counts_by_status": dict(sorted(manifest.counts_by_status.items())),
        "correction_rate_pct": _pct(status["corrected"], status["kept"] + status["corrected"]),
        "with_rationale": s["with_rationale"], "with_qa": s["with_qa"],
        "parse_failures": dict(sorted(self.failures.items())),
        "records_with_parse_failure": s["with_parse_failure"],
        "llm_calls": s["calls"], "retries": s["retries"],
        "transient_errors": dict(sorted(self.transient.items())),
        "reasons": dict(sorted(self.reasons.items())),
        "usage": {"input_tokens": tin, "output_tokens": tout,
                  "cost_usd": round((tin * self.price_in + tout * self.price_out) / 1e6, 4)},
        "mean_latency_s": round(s["latency_s"] / max(1, s["n"]), 4),
        "skipped_inputs": (skipped.total if skipped is not None else 0) + self.bad_images,
        "skipped_inputs_by_reason": {
            **(dict(skipped.by_reason) if skipped is not None else {}),
            **({"undecodable image": self.bad_images} if self.bad_images else {})},
        "skipped_examples": ((skipped.examples if skipped is not None else []) +
                             self.bad_image_examples)[:5],
        # Web images left out as near-copies of evaluation images (rew_jax/curation/dedup.py).
        "eval_duplicates": {"removed": self.duplicates, "eval_images": self.eval_images,
                            "examples": self.duplicate_examples},
        "seconds": round(seconds, 2),
    }
    if self.acc["n"]:
      report["accuracy_vs_truth"] = self.accuracy()
    return report

  def chosen_examples(self) -> list:
    return [x for status in sorted(self.examples) for x in self.examples[status]
            ][:self.num_examples]


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


def _thumbnail(image: bytes, size: int = 96) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  img = Image.open(io.BytesIO(image)).convert("RGB")
  img.thumbnail((size, size))
  out = io.BytesIO()
  img.save(out, format="PNG")
  return out.getvalue()


def _md_escape(text: str) -> str:
  return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;")[:200]


def write(report: dict, directory: str, examples: Sequence[tuple[Item, Outcome]],
          image_root: str) -> None:
  """report.json + report.md (+ thumbs/) with the given (item, outcome) examples, in
  `directory` (local or gs://)."""
  from rew_jax.curation import inputs  # pylint: disable=g-import-not-at-top
  storage.makedirs(os.path.join(directory, "thumbs"))
  rows = []
  for it, out in examples:
    thumb = os.path.join("thumbs", f"{it.image_id}.png")
    try:
      png = _thumbnail(inputs.load_image(it, image_root)[0])
    except Exception:  # A thumbnail is decoration: never fail the report for it.
      thumb = ""
    else:
      storage.write_bytes(os.path.join(directory, thumb), png)
    rows.append({"image_id": it.image_id, "caption": it.caption, "status": out.status,
                 "entity_id": out.entity_id, "entity_name": out.entity_name,
                 "answer": out.answer, "reason": out.reason,
                 "candidates": [c.name for c in it.candidates[:3]],
                 "rationale": out.rationale, "qa": out.qa, "thumbnail": thumb})
  examples = rows
  report = dict(report, examples=examples)
  storage.write_text(os.path.join(directory, "report.json"),
                     json.dumps(report, indent=1, ensure_ascii=False))
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
            f"- skipped inputs: {report['skipped_inputs']} "
            f"{report['skipped_inputs_by_reason'] or ''}".rstrip()]
  lines += [f"  - {_md_escape(m)}" for m in report["skipped_examples"]]
  dup = report.get("eval_duplicates") or {}
  if dup.get("eval_images"):
    lines.append(f"- near-duplicates of evaluation images removed before curation: "
                 f"{dup['removed']} (compared with {dup['eval_images']} evaluation images)")
    lines += [f"  - {_md_escape(m)}" for m in dup["examples"]]
  else:
    lines.append("- deduplication against evaluation images: off (curation.dedup)")
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
    kinds = acc.get("by_caption_kind")
    if kinds:
      lines += ["", "Per caption noise kind (label accuracy over the images of that kind):", "",
                "| caption kind | images | top-1 candidate | curated records | "
                "precision of labelled | truth in candidates |", "|---|---:|---:|---:|---:|---:|"]
      for kind, k in kinds.items():
        lines.append(f"| {kind} | {k['images_with_truth']} | {k['candidates_top1_pct']}% | "
                     f"{k['records_pct']}% | {k['records_labelled_precision_pct']}% | "
                     f"{k['candidates_recall_at_k_pct']}% |")
    buckets = acc.get("by_frequency")
    if buckets:
      lines += ["", "Per entity frequency (the true entity's web images: head ≥ 100, torso "
                "20–99, tail < 20):", "",
                "| bucket | entities | images | top-1 candidate | curated records |",
                "|---|---:|---:|---:|---:|"]
      for name, b in buckets.items():
        lines.append(f"| {name} | {b['entities']} | {b['images_with_truth']} | "
                     f"{b['candidates_top1_pct']}% | {b['records_pct']}% |")
      modes = acc["failure_modes_pct"]
      lines += ["", "Wrong labels by failure mode (% of all images):", "",
                "| label source | " + " | ".join(FAILURE_MODES) + " |",
                "|---|" + "---:|" * len(FAILURE_MODES)]
      for source, name in (("candidates_top1", "top-1 candidate"), ("records", "curated")):
        lines.append(f"| {name} | " + " | ".join(
            f"{modes[source][m]}%" for m in FAILURE_MODES) + " |")
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
  storage.write_text(os.path.join(directory, "report.md"), "\n".join(lines) + "\n")


def add_batch(report: dict, directory: str) -> None:
  """Adds a batch run's figures (`report["batch"]`: tokens, cost at the batch and the
  online price, the job timeline) to report.json and report.md in `directory`."""
  b = report["batch"]
  path = os.path.join(directory, "report.json")
  saved = json.loads(storage.read_text(path))
  saved["batch"] = b
  storage.write_text(path, json.dumps(saved, indent=1, ensure_ascii=False))
  lines = ["", "## Batch jobs", "",
           f"- tokens in/out: {b['input_tokens']}/{b['output_tokens']}; estimated cost "
           f"${b['cost_usd_batch']} at the batch price (${b['price_per_mtok_in']}/"
           f"${b['price_per_mtok_out']} per Mtok), ${b['cost_usd_online']} online",
           f"- {b['jobs']} jobs, {b['resubmitted_requests']} requests re-submitted", "",
           "| shard | job | batch id | status | requests | submitted | completed |",
           "|---|---:|---|---|---:|---|---|"]
  for j in b["timeline"]:
    lines.append(f"| {j['shard']} | {j['job']} | {j['batch_id']} | {j['status']} | "
                 f"{j['requests']} | {j['submitted_at']} | {j['completed_at']} |")
  md = os.path.join(directory, "report.md")
  storage.write_text(md, storage.read_text(md) + "\n".join(lines) + "\n")
