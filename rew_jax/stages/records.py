"""`python -m rew_jax records`: inspect REW record shards, or make them from OVEN files.

    python -m rew_jax records inspect W/records [--samples 3] [--check-hashes]
    python -m rew_jax records from-oven --references oven_entity_train.jsonl \
        oven_query_train.jsonl --image-dir OVEN/images --out W/oven_train_records
    python -m rew_jax records from-oven --references oven_entity_train.jsonl \
        oven_query_train.jsonl --image-tars 'OVEN/shard*.tar' \
        --image-mapping OVEN/ovenid2impath.csv --out W/oven_train_records

Images: `--image-dir` (the per-id layout, or with `--image-mapping` an extracted folder laid
out as ovenid2impath.csv says) or `--image-tars` (the released shards, read in place).
"""

from __future__ import annotations

from typing import Sequence

from rew_jax import records as records_lib
from rew_jax.data import oven_records
from rew_jax.stages import base


def main(argv: Sequence[str]) -> int:
  p = base.parser("records", __doc__)
  sub = p.add_subparsers(dest="command", required=True)
  q = sub.add_parser("inspect", help="print counts per curation status and a few samples")
  q.add_argument("directory")
  q.add_argument("--samples", type=int, default=3)
  q.add_argument("--check-hashes", action="store_true", help="also verify every shard's sha256")
  q = sub.add_parser("from-oven", help="OVEN annotation files → REW records (fine-tuning)")
  q.add_argument("--references", nargs="+", required=True, help="oven_*_train.jsonl file(s)")
  q.add_argument("--image-dir", default="",
                 help="OVEN images: the {xx}/{id}.jpg layout, or the folder that "
                      "--image-mapping's paths are relative to")
  q.add_argument("--image-mapping", default="",
                 help="ovenid2impath.csv: image id → path under --image-dir or in the tars")
  q.add_argument("--image-tars", nargs="+", default=(),
                 help="the released image tar shards (paths, globs or a folder), read in place")
  q.add_argument("--out", required=True, help="output records directory")
  args = p.parse_args(argv)
  if args.command == "from-oven":
    if not args.image_dir and not args.image_tars:
      p.error("from-oven needs --image-dir or --image-tars")
    manifest = oven_records.oven_to_records(args.references, args.image_dir, args.out,
                                            image_mapping=args.image_mapping,
                                            image_tars=args.image_tars)
    print(f"{manifest.total} records in {len(manifest.shards)} shards → {args.out}")
    return 0
  print(records_lib.inspect_directory(args.directory, samples=args.samples,
                                      check_hashes=args.check_hashes))
  return 0
