"""OVEN annotations → REW records, so that OVEN fine-tuning reads the same pipeline.

    python -m rew_jax records from-oven --references oven_entity_train.jsonl \
        oven_query_train.jsonl --image-dir OVEN/images --out W/oven_train_records

Each annotation becomes one record: the image bytes (OVEN layout, see
`oven_files.image_path`), `question` (the entity task's prompt), `entity_id`,
`entity_name` (the annotation's `entity_text`), `split` (its `data_split`), status `kept`
and backend `oven`. A missing image is an error naming the annotation.
"""

from __future__ import annotations

from typing import Sequence

from rew_jax import records
from rew_jax import storage
from rew_jax.data import oven_files


def oven_to_records(references: str | Sequence[str], image_dir: str, out_dir: str, *,
                    records_per_shard: int = 1000) -> records.Manifest:
  refs = oven_files.read_references(references, required=oven_files.REFERENCE_KEYS)

  def gen():
    for ref in refs:
      with storage.path(oven_files.image_path(image_dir, ref["image_id"])).open("rb") as f:
        image = f.read()
      yield records.RewRecord(
          image_id=ref["image_id"], image=image, entity_id=ref["entity_id"],
          entity_name=ref["entity_text"], curation_status="kept", backend="oven",
          split=ref["data_split"], question=ref["question"])

  return records.write_records(out_dir, gen(), records_per_shard=records_per_shard,
                               source="oven")
