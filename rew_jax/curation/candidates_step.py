"""The first stage of `python -m rew_jax curate`: make sure candidate shards exist.

Order of preference:
  1. shards already in the candidates directory (a manifest.json marks them complete);
  2. the candidates step of `rew_jax.kb.candidates` (text-embedding retrieval, Entity-WebLI),
     run with the same config and workdir;
  3. `config.candidates.method = "bm25"`, or when that module is not installed: a lexical
     stand-in written here, BM25 over KB titles (`rew_jax.kb.bm25`) queried with each
     caption, in the same shard format.
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Sequence

from rew_jax.errors import UserError

MANIFEST = "manifest.json"


def _complete(directory: str) -> bool:
  return os.path.isfile(os.path.join(directory, MANIFEST))


def write_bm25_candidates(captions_path: str, kb_source: str, kb_index: str, out_dir: str,
                          *, k: int = 10, shard_size: int = 1000, image_root: str = "") -> int:
  """BM25 top-k over KB titles for every caption → candidate shards + manifest."""
  from rew_jax.kb.bm25 import TitleBM25  # pylint: disable=g-import-not-at-top
  from rew_jax.kb.wiki6m import EntityKB  # pylint: disable=g-import-not-at-top
  from rew_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(captions_path):
    raise UserError(f"captions file {captions_path!r} does not exist")
  kb = EntityKB.open_or_build(kb_source, kb_index, progress=False)
  bm25 = TitleBM25.open_or_build(kb)
  rows = list(synthetic.read_jsonl(captions_path))
  scores, hits = bm25.search([r.get("caption", "") for r in rows], k)
  os.makedirs(out_dir, exist_ok=True)
  num_shards = max(1, -(-len(rows) // shard_size))
  names = []
  for s in range(num_shards):
    name = f"candidates-{s:05d}-of-{num_shards:05d}.jsonl"
    tmp = os.path.join(out_dir, f".{name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
      for i in range(s * shard_size, min(len(rows), (s + 1) * shard_size)):
        cands = [{"entity_id": kb.ids[int(r)], "name": kb.titles[int(r)],
                  "score": round(float(sc), 6)}
                 for sc, r in zip(scores[i], hits[i]) if r >= 0]
        f.write(json.dumps({"image_id": rows[i]["image_id"], "caption": rows[i]["caption"],
                            "image_path": rows[i]["image_path"], "candidates": cands},
                           ensure_ascii=False) + "\n")
    os.replace(tmp, os.path.join(out_dir, name))
    names.append(name)
  with open(os.path.join(out_dir, MANIFEST), "w") as f:
    json.dump({"format": "rew-candidates", "method": "bm25", "k": k, "count": len(rows),
               "shards": names, "image_root": image_root}, f, indent=1)
  return len(rows)


def ensure(config, workdir: str, argv: Sequence[str] = ()) -> str:
  """Returns the candidates directory, running the candidates step when needed."""
  c = config.curation
  out_dir = c.candidates_dir or os.path.join(workdir, "candidates")
  if _complete(out_dir):
    return out_dir
  cand_cfg = config.get("candidates", None)
  method = cand_cfg.get("method", "embedding") if cand_cfg is not None else "embedding"
  module = None
  if method != "bm25":
    try:
      module = importlib.import_module("rew_jax.kb.candidates")
    except ModuleNotFoundError as e:
      if e.name not in ("rew_jax.kb.candidates",):
        raise
  if module is not None:
    print("== candidates (rew_jax.kb.candidates) ==")
    rc = module.main(list(argv))
    if rc or not os.path.isdir(out_dir):
      raise UserError(f"the candidates step failed (exit {rc}) or wrote no {out_dir}")
    return out_dir
  world = os.path.join(workdir, "world")
  print("== candidates (BM25 over KB titles) ==")
  n = write_bm25_candidates(
      (cand_cfg.get("captions", "") if cand_cfg is not None else "") or
      os.path.join(world, "web", "captions.jsonl"),
      c.kb_source or os.path.join(world, "kb", "Wiki6M_ver_1_0.jsonl.gz"),
      c.kb_index_dir or os.path.join(workdir, "kb_index"), out_dir,
      k=cand_cfg.get("k", 10) if cand_cfg is not None else 10,
      shard_size=cand_cfg.get("shard_size", 1000) if cand_cfg is not None else 1000,
      image_root=c.image_root or world)
  print(f"{n} captions → {out_dir}")
  return out_dir
