"""OVEN annotations → REW records, so that OVEN fine-tuning reads the same pipeline.

    python -m rew_jax records from-oven --references oven_entity_train.jsonl \
        oven_query_train.jsonl --image-dir OVEN/images --out W/oven_train_records
    python -m rew_jax records from-oven --references oven_entity_train.jsonl \
        oven_query_train.jsonl --image-tars 'OVEN/shard*.tar' \
        --image-mapping OVEN/ovenid2impath.csv --out W/oven_train_records

Each annotation becomes one record: the image bytes, `question` (the entity task's prompt),
`entity_id`, `entity_name` (the annotation's `entity_text`), `split` (its `data_split`),
status `kept` and backend `oven`. Images come from a folder in the per-id layout, the same
folder through `ovenid2impath.csv`, or the released tar shards read in place
(`oven_files.open_images`); an image without a mapping row or tar member stops the
conversion before anything is written, naming the image and the file; a missing file in a
folder is an error naming the annotation.
"""

from __future__ import annotations

from typing import Sequence

from rew_jax import records
from rew_jax.data import oven_files


def oven_to_records(references: str | Sequence[str], image_dir: str, out_dir: str, *,
                    image_mapping: str = "", image_tars: str | Sequence[str] = (),
                    records_per_shard: int = 1000) -> records.Manifest:
  refs = oven_files.read_references(references, required=oven_files.REFERENCE_KEYS)
  images = oven_files.open_images(image_dir, mapping=image_mapping, tars=image_tars,
                                  ids={r["image_id"] for r in refs})

  def gen():
    for ref in refs:
      try:
        image = images.read(ref["image_id"])
      except oven_files.OvenFormatError as e:
        raise oven_files.OvenFormatError(f"annotation {ref['data_id']}: {e}") from None
      yield records.RewRecord(
          image_id=ref["image_id"], image=image, entity_id=ref["entity_id"],
          entity_name=ref["entity_text"], curation_status="kept", backend="oven",
          split=ref["data_split"], question=ref["question"])

  return records.write_records(out_dir, gen(), records_per_shard=records_per_shard,
                               source="oven")
