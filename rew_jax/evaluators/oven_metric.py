"""OVEN scores, with the official evaluator's exact conventions.

Files (official formats, read by `rew_jax.data.oven_files`):
  references   `oven_{entity,query}_{val,test}.jsonl`, one object per line with `data_id`,
               `image_id`, `question`, `entity_id`, `entity_text`, `data_split`
               (e.g. "entity_val_seen", "query_val_unseen");
  predictions  one `{"data_id": ..., "pred_entity_id": ...}` per line (a Wikidata id).

Official-compatible score (edchengg/oven_eval, `oven_eval.py`):
  * a reference's bucket is `seen` when "_seen" is in its data_split, `unseen` when
    "_unseen" is; its task (entity / query) is the data_split's first word;
  * bucket accuracy = round(correct / n * 100, 2), n = the number of *predictions* that fall
    in the bucket (in that order of operations, for bit-equal floats);
  * harmonic_mean(a, b) = 2 / (1/a + 1/b) with a zero replaced by 1e-12;
  * entity_score = HM(entity seen, entity unseen), query_score likewise, and
    final_score = HM(query_score, entity_score) computed from the *unrounded* task scores;
    the three are rounded to 2 decimals only when reported.
  The official loop iterates over predictions, so a missing prediction shrinks n (and can
  raise the score), a duplicate counts twice, and a bucket without predictions fails.

References without `entity_id` (OVEN's test splits) are not scored: their predictions are
only checked (known ids, no duplicates) and counted under `unlabeled`.

Our API is stricter: duplicate or unknown `data_id`s, and references that mix splits of one
bucket (val and test), are `OvenFormatError`s. With those excluded, `score` reports the
official-compatible figures and, beside them, `strict` figures whose n is the number of
*references* in the bucket, so a missing prediction counts as wrong.
"""

from __future__ import annotations

import collections
from typing import Any, Mapping, Sequence

from rew_jax.data.oven_files import (OvenFormatError, is_labeled, read_predictions,
                                     read_references)

TASKS = ("entity", "query")
BUCKETS = ("seen", "unseen")
ZERO = 1e-12  # What the official harmonic mean puts in place of a zero.


# --------------------------------------------------------------------------------------------
# The official arithmetic.
# --------------------------------------------------------------------------------------------


def bucket_of(data_split: str) -> str | None:
  if "_seen" in data_split:
    return "seen"
  if "_unseen" in data_split:
    return "unseen"
  return None  # e.g. "entity_train": not scored.


def task_of(data_split: str) -> str:
  return data_split.split("_", 1)[0]


def accuracy(correct: int, total: int) -> float:
  """The official per-bucket percentage: round(correct / total * 100, 2)."""
  return round(correct / total * 100, 2)


def harmonic_mean(*values: float) -> float:
  safe = [v if v != 0 else ZERO for v in values]
  return len(safe) / sum(1.0 / v for v in safe)


def official_counts(references: Sequence[Mapping[str, Any]],
                    predictions: Sequence[Mapping[str, Any]]) -> dict[str, list[int]]:
  """data_split → [correct, n] exactly as the official loop counts (over predictions:
  duplicates count twice, missing ones are not counted); unknown ids are an error."""
  by_id = {r["data_id"]: r for r in references}
  counts: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
  for p in predictions:
    ref = by_id.get(p["data_id"])
    if ref is None:
      raise OvenFormatError(f"prediction for data_id {p['data_id']!r} which no reference has")
    if not is_labeled(ref):  # A test reference: nothing to score it against.
      continue
    c = counts[ref["data_split"]]
    c[0] += int(ref["entity_id"] == p["pred_entity_id"])
    c[1] += 1
  return dict(counts)


def scores_from_counts(counts: Mapping[str, Sequence[int]]) -> dict[str, Any]:
  """{entity,query}_result {seen, unseen}, {entity,query}_score and final_score.

  A task or bucket without counts gets None (the official script fails there), and so does
  every score that needs it.
  """
  results: dict[str, dict[str, float | None]] = {t: {b: None for b in BUCKETS} for t in TASKS}
  seen_split: dict[tuple[str, str], str] = {}
  for split, (correct, total) in sorted(counts.items()):
    bucket, task = bucket_of(split), task_of(split)
    if bucket is None or total == 0:
      continue
    if task not in results:
      raise OvenFormatError(f"data_split {split!r}: task {task!r} is neither entity nor query")
    other = seen_split.setdefault((task, bucket), split)
    if other != split:
      raise OvenFormatError(f"data_splits {other!r} and {split!r} fall in the same bucket "
                            f"({task} {bucket}); score val and test separately")
    results[task][bucket] = accuracy(correct, total)
  out: dict[str, Any] = {}
  raw = {}
  for task in TASKS:
    seen, unseen = results[task]["seen"], results[task]["unseen"]
    raw[task] = None if seen is None or unseen is None else harmonic_mean(seen, unseen)
    out[f"{task}_result"] = results[task]
    out[f"{task}_score"] = None if raw[task] is None else round(raw[task], 2)
  final = (None if raw["query"] is None or raw["entity"] is None
           else harmonic_mean(raw["query"], raw["entity"]))
  out["final_score"] = None if final is None else round(final, 2)
  return out


# --------------------------------------------------------------------------------------------
# Scoring with our checks: the official-compatible and the strict figures.
# --------------------------------------------------------------------------------------------


def check_predictions(references: Sequence[Mapping[str, Any]],
                      predictions: Sequence[Mapping[str, Any]]) -> None:
  known = {r["data_id"] for r in references}
  seen = set()
  for p in predictions:
    data_id = p["data_id"]
    if data_id not in known:
      raise OvenFormatError(f"prediction for data_id {data_id!r} which no reference has "
                            "(predictions and references from different files?)")
    if data_id in seen:
      raise OvenFormatError(f"duplicate prediction for data_id {data_id!r}")
    seen.add(data_id)


def strict_counts(references: Sequence[Mapping[str, Any]],
                  predictions: Sequence[Mapping[str, Any]]) -> dict[str, list[int]]:
  """data_split → [correct, number of references]: a missing prediction is wrong."""
  pred = {p["data_id"]: p["pred_entity_id"] for p in predictions}
  counts: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
  for r in references:
    if not is_labeled(r):
      continue
    c = counts[r["data_split"]]
    c[0] += int(r["data_id"] in pred and pred[r["data_id"]] == r["entity_id"])
    c[1] += 1
  return dict(counts)


def score(references: Sequence[Mapping[str, Any]],
          predictions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """The official-compatible figures (top level) and the strict ones (`strict`), plus
  `counts`: per bucket, references, predictions and missing predictions, and `unlabeled`:
  per data_split, the references without `entity_id` (a test split's), predicted (their
  predictions are checked for ids and duplicates) but not scored."""
  check_predictions(references, predictions)
  official = official_counts(references, predictions)
  strict = strict_counts(references, predictions)
  out = scores_from_counts(official)
  out["strict"] = scores_from_counts(strict)
  counts = {}
  for split, (_, n_ref) in sorted(strict.items()):
    if bucket_of(split) is None:
      continue
    n_pred = official.get(split, [0, 0])[1]
    counts[split] = {"references": n_ref, "predictions": n_pred, "missing": n_ref - n_pred}
  out["counts"] = counts
  unlabeled: dict[str, dict[str, int]] = {}
  predicted = {p["data_id"] for p in predictions}
  for r in references:
    if not is_labeled(r):
      c = unlabeled.setdefault(r["data_split"], {"references": 0, "predictions": 0})
      c["references"] += 1
      c["predictions"] += int(r["data_id"] in predicted)
  out["unlabeled"] = unlabeled
  return out


def score_files(references: str | Sequence[str], predictions: str | Sequence[str]) -> dict:
  return score(read_references(references), read_predictions(predictions))


def flat_metrics(result: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
  """`score`'s nested result → {"entity_seen": .., "final_score": .., "strict/...": ..},
  dropping None (absent task or bucket)."""
  out = {}
  for task in TASKS:
    for bucket in BUCKETS:
      out[f"{prefix}{task}_{bucket}"] = result[f"{task}_result"][bucket]
    out[f"{prefix}{task}_score"] = result[f"{task}_score"]
  out[f"{prefix}final_score"] = result["final_score"]
  if "strict" in result:
    out.update(flat_metrics(result["strict"], prefix + "strict/"))
  return {k: v for k, v in out.items() if v is not None}
