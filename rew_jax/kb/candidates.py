"""The candidates step (Entity-WebLI): top-k KB entities for every web image's caption.

    python -m rew_jax candidates --config configs/candidates_demo.py --workdir W

Output (the contract with the curation step, see docs/kb_and_retrieval.md):
  W/candidates/candidates-00000-of-0000N.jsonl   one line per image:
      {"image_id", "caption", "image_path", "candidates": [{"entity_id", "name", "score"}...]}
      best first; image_path is absolute or a tar:// / parquet:// reference
      (`rew_jax.kb.sources.read_image_bytes` opens either)
  W/candidates/manifest.json                      counts per shard and in total
Each shard is written to a temporary name and renamed when complete, so an interrupted run
resumes at the first missing shard. With several hosts (a multi-process JAX job), host i
writes the shards i, i + H, ..., encoding and searching on its own devices only (a mesh of
`jax.local_devices()`: hosts never wait on each other per batch); process 0 builds the KB
index first, the entity embeddings are split across hosts (kb/embeddings.py), and process 0
writes the manifest once every host is done.

The KB index, entity embeddings, BM25 index, ALD codes and name trie are built on first use
next to the index (`kb.index_dir`, default W/kb) and reused afterwards.
"""

from __future__ import annotations

import collections
import copy
import json
import os
import time
from typing import Sequence

import jax

from rew_jax import config as config_lib
from rew_jax import distributed
from rew_jax import storage
from rew_jax import workdir as workdir_lib
from rew_jax.errors import ConfigError
from rew_jax.kb import bm25 as bm25_lib
from rew_jax.kb import codes as codes_lib
from rew_jax.kb import embeddings as embeddings_lib
from rew_jax.kb import retrieval, sources, text_encoder, wiki6m

METHODS = ("embedding", "bm25")


def default_config() -> config_lib.ConfigDict:
  c = config_lib.ConfigDict()
  # Wiki6M file; empty with data.format=world → <world>/kb/Wiki6M_ver_1_0.jsonl.gz.
  c.kb = config_lib.ConfigDict(dict(path="", index_dir="", skip_bad_lines=False,
                                    max_summary_chars=2000))
  c.encoder = config_lib.ConfigDict(dict(model_dir="", max_length=64, batch_size=128))
  c.embeddings = config_lib.ConfigDict(dict(dir="", text="title", summary_chars=300,
                                            dtype="float16", shard_rows=65536))
  c.retrieval = config_lib.ConfigDict(dict(method="embedding", k=10, mode="exact",
                                           chunk_rows=65536, query_block=1024,
                                           recall_target=0.95, query_batch=4096,
                                           backend="auto"))
  # path empty with format=world → W/world (where `python -m rew_jax world` writes).
  # columns: a url list's spelling (sources.COLUMNS: laion, coyo, cc12m, datacomp), which
  # replaces the three keys.
  c.data = config_lib.ConfigDict(dict(format="world", path="", columns="",
                                      caption_key="caption", image_key="image_path",
                                      id_key="image_id",
                                      skip_bad_records=False, records_per_shard=10000))
  c.artifacts = config_lib.ConfigDict(dict(codes=True, code_length=3, seed=0))
  return c


class _Paths:
  """Inputs and outputs of the step: the config's paths, else the workdir's layout."""

  def __init__(self, config, workdir: str):
    wd = workdir_lib.Workdir(workdir)
    self.data = config.data.path or (wd.world if config.data.format == "world" else "")
    fmt = config.data.format
    if fmt == "auto" and self.data:
      fmt = sources.detect_format(self.data)
    self.format = fmt
    self.kb = config.kb.path
    if not self.kb and fmt == "world":
      self.kb = workdir_lib.world_kb_file(self.data)
    if not self.kb:
      raise ConfigError("candidates.kb.path is empty: point it at Wiki6M_ver_1_0.jsonl(.gz)")
    self.index = config.kb.index_dir or wd.kb_index
    self.embeddings = config.embeddings.dir or os.path.join(
        self.index, f"embeddings-{config.embeddings.text}-{config.embeddings.dtype}")
    self.out = wd.candidates


class _Mirrors:
  """The KB index (and the entity embeddings, when kept outside it) as local working copies:
  the directories themselves on a local or shared disk, a per-process copy of a bucket's."""

  def __init__(self, paths: _Paths):
    tag = f"process{distributed.process_index()}"
    self.index = storage.Mirror(paths.index, tag=tag)
    self.all = [self.index]
    self.local_paths = copy.copy(paths)
    self.local_paths.index = self.index.local
    inside = paths.index.rstrip("/") + "/"
    if paths.embeddings.startswith(inside):
      self.local_paths.embeddings = os.path.join(self.index.local,
                                                 paths.embeddings[len(inside):])
    else:
      self.all.append(storage.Mirror(paths.embeddings, tag=tag))
      self.local_paths.embeddings = self.all[-1].local
    for mirror in self.all:
      mirror.pull()

  def sync(self, name: str) -> None:
    """Uploads this process's changes, waits for every process, fetches theirs."""
    for mirror in self.all:
      mirror.push()
    distributed.barrier(name)
    for mirror in self.all:
      mirror.pull()


def _shard_name(i: int, n: int) -> str:
  return f"candidates-{i:05d}-of-{n:05d}.jsonl"


class CandidateRetriever:
  """Captions → top-k (entity_id, name, score), by embedding similarity or BM25."""

  def __init__(self, config, kb: wiki6m.EntityKB, embeddings_dir: str, *,
               sync=distributed.barrier):
    self.kb, self.k = kb, config.retrieval.k
    self.method = config.retrieval.method
    if self.method not in METHODS:
      raise ConfigError(f"retrieval.method {self.method!r} is not one of {METHODS}")
    self.query_batch = config.retrieval.query_batch
    if self.method == "bm25":
      self.bm25 = bm25_lib.TitleBM25.open_or_build(kb)
      return
    # This host's devices only: each host encodes and searches its own captions.
    mesh = retrieval.entity_mesh(jax.local_devices())
    self.encoder = text_encoder.TextEncoder(config.encoder.model_dir or None,
                                            max_length=config.encoder.max_length,
                                            batch_size=config.encoder.batch_size, mesh=mesh)
    store = embeddings_lib.build_embeddings(
        kb, self.encoder, embeddings_dir, text=config.embeddings.text,
        summary_chars=config.embeddings.summary_chars, shard_rows=config.embeddings.shard_rows,
        dtype=config.embeddings.dtype, sync=sync)
    self.searcher = retrieval.TopKSearcher(
        store, chunk_rows=config.retrieval.chunk_rows, query_block=config.retrieval.query_block,
        mode=config.retrieval.mode, recall_target=config.retrieval.recall_target, mesh=mesh,
        backend=config.retrieval.backend)

  def search(self, captions: Sequence[str]) -> list[list[dict]]:
    out = []
    for start in range(0, len(captions), self.query_batch):
      batch = captions[start:start + self.query_batch]
      if self.method == "bm25":
        scores, rows = self.bm25.search(batch, self.k)
      else:
        scores, rows = self.searcher.search(self.encoder.encode(batch), self.k)
      for s_row, r_row in zip(scores, rows):
        out.append([{"entity_id": self.kb.ids[int(r)], "name": self.kb.titles[int(r)],
                     "score": round(float(s), 6)} for s, r in zip(s_row, r_row) if r >= 0])
    return out


def _write_shard(path: str, records: list[dict], candidates: list[list[dict]],
                 stats: dict) -> None:
  storage.write_text(os.path.splitext(path)[0] + ".stats.json", json.dumps(stats))
  storage.write_text(path, "".join(  # Last, whole: its presence means the shard is complete.
      json.dumps(dict(record, candidates=cands), ensure_ascii=False) + "\n"
      for record, cands in zip(records, candidates)))


def _manifest(out_dir: str, names: list[str], config, paths: _Paths, kb_count: int) -> dict:
  shards = []
  for name in names:
    with storage.open_file(f"{out_dir}/{name}", "rb") as f:
      records = sum(1 for _ in f)
    stats_path = f"{out_dir}/{os.path.splitext(name)[0]}.stats.json"
    stats = json.loads(storage.read_text(stats_path)) if storage.isfile(stats_path) else {}
    shards.append({"path": name, "records": records, "skipped": stats.get("skipped", 0),
                   "upstream": stats.get("upstream", {})})
  upstream = collections.Counter()
  for s in shards:
    upstream.update(s["upstream"])
  manifest = {
      "format": "rew_jax.candidates/1",
      "num_shards": len(names),
      "records": sum(s["records"] for s in shards),
      "skipped": sum(s["skipped"] for s in shards),
      # Samples the downloader listed but could not fetch (img2dataset's sidecar), by status;
      # the shards' .stats.json name each with its key.
      "upstream_failed": dict(sorted(upstream.items())),
      "k": config.retrieval.k, "method": config.retrieval.method,
      "source": {"format": paths.format, "path": storage.absolute(paths.data)},
      "kb": {"path": storage.absolute(paths.kb), "index_dir": storage.absolute(paths.index),
             "entities": kb_count},
      "shards": shards,
  }
  storage.write_text(f"{out_dir}/manifest.json", json.dumps(manifest, indent=1))
  return manifest


def prepare_kb(config, paths: _Paths) -> wiki6m.EntityKB:
  """Opens (building on first use) the KB index and, if configured, its codes and trie."""
  kb = wiki6m.EntityKB.open_or_build(paths.kb, paths.index,
                                     skip_bad=config.kb.skip_bad_lines,
                                     max_summary_chars=config.kb.max_summary_chars)
  if config.artifacts.codes and not os.path.isfile(kb.path("code_trie.npz")):
    import tokenizers  # pylint: disable=g-import-not-at-top
    model_dir = config.encoder.model_dir or text_encoder.default_model_dir()
    if os.path.isfile(os.path.join(model_dir, "tokenizer.json")):
      tok = tokenizers.Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    else:  # A folder with only the WordPiece vocabulary.
      tok = tokenizers.BertWordPieceTokenizer(os.path.join(model_dir, "vocab.txt"))
    tok.no_padding()
    codes_lib.build_name_artifacts(kb, tok, length=config.artifacts.code_length,
                                   seed=config.artifacts.seed)
  return kb


def run_candidates(config, workdir: str, *, host_index: int | None = None,
                   host_count: int | None = None, log=print) -> str:
  """Runs the step; returns W/candidates. `config` is the `candidates` section."""
  paths = _Paths(config, workdir)
  host_index = jax.process_index() if host_index is None else host_index
  host_count = jax.process_count() if host_count is None else host_count
  units = sources.plan_units(paths.format, paths.data, config.data.records_per_shard)
  storage.makedirs(paths.out)
  names = [_shard_name(i, len(units)) for i in range(len(units))]
  mine = [i for i in range(len(units)) if i % host_count == host_index]
  todo = [i for i in mine if not storage.isfile(f"{paths.out}/{names[i]}")]
  # A bucket's index is worked on in a local mirror (memory-mapped tables), one per process.
  mirrors = _Mirrors(paths)
  if distributed.process_index() == 0:  # Built once, then opened by the other hosts.
    kb = prepare_kb(config, mirrors.local_paths)
  mirrors.sync("candidates-kb")
  if distributed.process_index() != 0:
    kb = prepare_kb(config, mirrors.local_paths)
  log(f"candidates: {len(units)} shards, {len(mine) - len(todo)} of this host's {len(mine)} "
      "already done; "
      f"KB {len(kb)} entities")
  if todo:
    retriever = CandidateRetriever(config, kb, mirrors.local_paths.embeddings,
                                   sync=mirrors.sync)
    keys = sources.keys_for(config.data.columns, config.data.caption_key,
                            config.data.image_key, config.data.id_key)
    for i in todo:
      start = time.time()
      stats = {"skipped": 0}
      records = list(sources.read_unit(units[i], keys, skip_bad=config.data.skip_bad_records,
                                       stats=stats))
      cands = retriever.search([r["caption"] for r in records])
      _write_shard(f"{paths.out}/{names[i]}", records, cands, stats)
      failed = sum(stats.get("upstream", {}).values())
      log(f"  {names[i]}: {len(records)} images, {stats['skipped']} skipped, "
          + (f"{failed} failed upstream, " if failed else "") +
          f"{time.time() - start:.1f} s")
  distributed.barrier("candidates-shards")
  if distributed.process_index() == 0 and all(
      storage.isfile(f"{paths.out}/{n}") for n in names):
    m = _manifest(paths.out, names, config, paths, len(kb))
    log(f"candidates: {m['records']} images in {m['num_shards']} shards → {paths.out}")
  return paths.out


def read_candidates(out_dir: str):
  """Yields the records of all candidate shards listed in the manifest, in order."""
  manifest = json.loads(storage.read_text(f"{out_dir}/manifest.json"))
  for shard in manifest["shards"]:
    with storage.open_file(f"{out_dir}/{shard['path']}", "r", encoding="utf-8") as f:
      for line in f:
        yield json.loads(line)
