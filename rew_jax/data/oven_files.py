"""OVEN's file formats: references, predictions and the image layout.

  references   `oven_{entity,query}_{val,test}.jsonl`, one object per line with `data_id`,
               `image_id`, `question`, `entity_id`, `entity_text`, `data_split`
               (e.g. "entity_val_seen", "query_val_unseen"); test references come
               without `entity_id` (unlabeled: predicted, not scored);
  predictions  one `{"data_id": ..., "pred_entity_id": ...}` per line (a Wikidata id);
  images       `<image_dir>/<id.split('_')[-1][:2]>/<id>.<ext>`, or flat `<image_dir>/<id>.<ext>`.

Read by the OVEN evaluator and scorer (`rew_jax.evaluators`) and by the conversion of OVEN
annotations to records for fine-tuning (`rew_jax.data.oven_records`). Every malformed line
is an `OvenFormatError` naming the file and line.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping, Sequence

from rew_jax import storage
from rew_jax.errors import UserError

REFERENCE_KEYS = ("data_id", "image_id", "question", "entity_id", "data_split")
# What a reference to predict needs: a test split's references carry no `entity_id` (OVEN
# keeps its test labels; predictions are submitted in the official format).
QUERY_KEYS = ("data_id", "image_id", "question", "data_split")


def is_labeled(reference: Mapping[str, Any]) -> bool:
  """Whether a reference carries its answer (`entity_id`); a test split's do not."""
  return reference.get("entity_id") is not None


def split_kind(reference: Mapping[str, Any]) -> str:
  """"val", "test", "train"...: the second word of `data_split` ("entity_val_seen" → "val")."""
  parts = reference["data_split"].split("_")
  return parts[1] if len(parts) > 1 else ""


class OvenFormatError(UserError):
  """An OVEN reference or prediction file, or a pair of them, that cannot be scored."""


def _read_jsonl(path: str) -> Iterable[tuple[int, dict]]:
  if not storage.isfile(path):
    raise OvenFormatError(f"{path}: no such file")
  with storage.path(path).open(encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise OvenFormatError(f"{path}:{lineno}: not JSON ({e.msg})") from None
      if not isinstance(row, dict):
        raise OvenFormatError(f"{path}:{lineno}: expected a JSON object, got "
                              f"{type(row).__name__}")
      yield lineno, row


def read_references(paths: str | Sequence[str], *,
                    required: Sequence[str] = ("data_id", "data_split")) -> list[dict]:
  """Reference rows of one or more files; `data_id`s must be unique over all of them.

  `required` keys must be present as strings (prediction also needs image_id and question:
  pass QUERY_KEYS; training needs entity_id too: REFERENCE_KEYS). An `entity_id`, where
  present and not null, must be a string: a reference without one is unlabeled (a test
  split), predicted but not scored.
  """
  paths = [paths] if isinstance(paths, str) else list(paths)
  rows, where = [], {}
  for path in paths:
    for lineno, row in _read_jsonl(path):
      for key in required:
        if not isinstance(row.get(key), str):
          got = "missing" if key not in row else f"{type(row[key]).__name__} {row[key]!r}"
          raise OvenFormatError(f"{path}:{lineno}: reference key {key!r} must be a string "
                                f"({got})")
      if row.get("entity_id") is not None and not isinstance(row["entity_id"], str):
        raise OvenFormatError(f"{path}:{lineno}: reference key 'entity_id' must be a string "
                              f"or absent (got {type(row['entity_id']).__name__} "
                              f"{row['entity_id']!r})")
      data_id = row["data_id"]
      if data_id in where:
        raise OvenFormatError(f"{path}:{lineno}: duplicate reference data_id {data_id!r} "
                              f"(first at {where[data_id]})")
      where[data_id] = f"{path}:{lineno}"
      rows.append(row)
  return rows


def read_predictions(paths: str | Sequence[str]) -> list[dict]:
  """Prediction rows `{"data_id", "pred_entity_id"}`; duplicates are an error."""
  paths = [paths] if isinstance(paths, str) else list(paths)
  rows, where = [], {}
  for path in paths:
    for lineno, row in _read_jsonl(path):
      if not isinstance(row.get("data_id"), str):
        raise OvenFormatError(f"{path}:{lineno}: prediction without a string 'data_id'")
      if "pred_entity_id" not in row:  # The official validation step rejects this too.
        raise OvenFormatError(f"{path}:{lineno}: pred_entity_id is missing for data_id "
                              f"{row['data_id']!r}")
      pred = row["pred_entity_id"]
      if pred is not None and not isinstance(pred, str):
        raise OvenFormatError(f"{path}:{lineno}: pred_entity_id must be a string or null, got "
                              f"{type(pred).__name__} {pred!r}")
      if row["data_id"] in where:
        raise OvenFormatError(f"{path}:{lineno}: duplicate prediction for data_id "
                              f"{row['data_id']!r} (first at {where[row['data_id']]})")
      where[row["data_id"]] = f"{path}:{lineno}"
      rows.append({"data_id": row["data_id"], "pred_entity_id": pred})
  return rows


def write_predictions(path: str, predictions: Iterable[Mapping[str, Any]]) -> str:
  """Writes the official prediction format, atomically (local or gs://)."""
  return storage.write_text(path, "".join(
      json.dumps({"data_id": p["data_id"], "pred_entity_id": p["pred_entity_id"]},
                 ensure_ascii=False) + "\n" for p in predictions))


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPEG", ".JPG", ".webp")


def image_path(image_dir: str, image_id: str) -> str:
  """The file of `image_id` in the OVEN layout (or flat); OvenFormatError if absent."""
  tried = []
  for folder in (os.path.join(image_dir, image_id.split("_")[-1][:2]), image_dir):
    for ext in IMAGE_EXTENSIONS:
      path = os.path.join(folder, image_id + ext)
      if storage.isfile(path):
        return path
      tried.append(path)
  raise OvenFormatError(f"image {image_id!r} not found under {image_dir!r} (looked for "
                        f"{tried[0]} and other extensions/flat layout)")
