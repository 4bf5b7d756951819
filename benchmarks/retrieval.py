"""Entity retrieval: sharded JAX top-k against faiss, encoder throughput, KB build, recall.

    python benchmarks/retrieval.py --quick      # < 60 s on 2 cores
    python benchmarks/retrieval.py              # the issue's sizes: 1M entities, 1M titles

Measured side by side in one run:
  1. top-k (k=10) of 4,096 queries over N random unit vectors of width 384: our
     `TopKSearcher` (entities stored float16 as in the real index, exact mode; its default
     backend, faiss on CPU, and its JAX search) against faiss-cpu `IndexFlatIP` (float32
     copies of the same float16 vectors), interleaved over --rounds (median and spread);
     the id agreement is reported too. faiss comes with the `bench` (or `faiss`)
     extra; without it the baseline is null and ours is the JAX search.
  2. entity titles embedded per second with all-MiniLM-L6-v2 (the shipped weights).
  3. KB index build time and peak memory for M synthetic entities (Wiki6M jsonl), plus the
     ALD codes and name trie over them.
  4. recall@k (k = 1, 5, 10, 20) of the true entity among the candidates on the embedded
     world, overall and per caption kind (noisy captions cap it: the LLM step fixes that).
The last stdout line is one JSON object: {"benchmark", "ours_s", "baseline", "baseline_s",
"speedup" = baseline_s / ours_s, "speedup_jax" = baseline_s / ours_jax_s, ...}.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from rew_jax.kb import retrieval

WORDS = ("crimson azure golden striped spotted crested kestrel heron falcon turtle river "
         "bridge tower castle museum equity market church lake island mountain battle "
         "station university school theatre opera festival county district railway").split()


def unit_vectors(rng, n, d, chunk=1 << 17):
  out = np.empty((n, d), np.float32)
  for s in range(0, n, chunk):
    x = rng.standard_normal((min(chunk, n - s), d), dtype=np.float32)
    out[s:s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
  return out


def _timed(fn):
  start = time.perf_counter()
  out = fn()
  return time.perf_counter() - start, out


def bench_topk(n, queries, dim, k, chunk_rows, query_block, rounds, baseline=True,
               resident_bytes=2 << 30):
  """Ours (the default backend for these devices: faiss's `knn` per chunk on CPU when it is
  installed), our JAX search, and faiss `IndexFlatIP`, interleaved `rounds` times."""
  rng = np.random.default_rng(0)
  entities = unit_vectors(rng, n, dim)
  q = unit_vectors(rng, queries, dim)
  entities16 = entities.astype(np.float16)
  del entities  # float32 copy: only faiss's baseline needs it (rebuilt below).
  kw = dict(chunk_rows=chunk_rows, query_block=query_block, resident_bytes=resident_bytes)
  ours = retrieval.TopKSearcher(entities16, **kw)
  jax_search = (ours if ours.backend == "jax"
                else retrieval.TopKSearcher(entities16, backend="jax", **kw))
  jax_search.search(q[:min(queries, query_block)], k)  # Compile.
  sides = {"ours": lambda: ours.search(q, k)[1]}
  if jax_search is not ours:
    sides["ours_jax"] = lambda: jax_search.search(q, k)[1]
  result = {"n": n, "queries": queries, "dim": dim, "k": k, "rounds": rounds,
            "backend": ours.backend, "devices": jax_search.mesh.size,
            "chunk_rows": jax_search.chunk_rows, "query_block": query_block}
  faiss = None
  if baseline:
    try:
      import faiss  # pylint: disable=g-import-not-at-top
    except ImportError:
      print("faiss-cpu is not installed (pip install -c constraints.txt -e '.[bench]'): "
            "no baseline, and ours is the JAX search")
  if faiss is not None:
    index = faiss.IndexFlatIP(dim)
    index.add(entities16.astype(np.float32))
    sides["faiss"] = lambda: index.search(q, k)[1]
    result["faiss_threads"] = faiss.omp_get_max_threads()
  times = {name: [] for name in sides}
  rows = {}
  for _ in range(rounds):  # Interleaved, so both sides see the same load.
    for name, fn in sides.items():
      seconds, rows[name] = _timed(fn)
      times[name].append(seconds)
  for name, ts in times.items():
    result[f"{name}_s"] = round(float(np.median(ts)), 3)
    result[f"{name}_spread_s"] = [round(min(ts), 3), round(max(ts), 3)]
  if faiss is None:
    result.update(baseline="faiss-cpu IndexFlatIP (" + (
        "not installed)" if baseline else "not run: --no-baseline)"), baseline_s=None,
                  speedup=None, speedup_jax=None)
    result.setdefault("ours_jax_s", result["ours_s"])
    return result
  result.setdefault("ours_jax_s", result["ours_s"])
  # The same float16-rounded vectors on both sides (faiss in float32): only ties may swap.
  agree = lambda a: float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, rows["faiss"])]))
  result.update(baseline="faiss-cpu IndexFlatIP", baseline_s=result["faiss_s"],
                speedup=round(result["faiss_s"] / result["ours_s"], 3),
                speedup_jax=round(result["faiss_s"] / result["ours_jax_s"], 3),
                recall_vs_faiss=round(agree(rows["ours"]), 4),
                recall_vs_faiss_jax=round(agree(rows.get("ours_jax", rows["ours"])), 4))
  return result


def bench_encoder(num_titles, batch_size=256):
  from rew_jax.kb import text_encoder  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  titles = [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 5)))).title()
            for _ in range(num_titles)]
  encoder = text_encoder.TextEncoder(max_length=32, batch_size=batch_size)
  encoder.encode(titles[:batch_size])  # Compile the common buckets.
  start = time.perf_counter()
  encoder.encode(titles)
  seconds = time.perf_counter() - start
  return {"titles": num_titles, "seconds": round(seconds, 2),
          "titles_per_s": round(num_titles / seconds, 1)}


_BUILD = r"""
import json, sys, time
import tokenizers
from rew_jax.kb import codes, text_encoder, wiki6m
src, index = sys.argv[1], sys.argv[2]


def hwm_mb():  # VmHWM resets at exec, unlike ru_maxrss, which a child inherits on Linux.
  for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
      return int(line.split()[1]) // 1024


rss_before = hwm_mb()  # After the imports.
t = time.perf_counter()
kb = wiki6m.EntityKB.build(src, index, progress=False)
build_s = time.perf_counter() - t
t = time.perf_counter()
kb = wiki6m.EntityKB(index)
reopen_s = time.perf_counter() - t
t = time.perf_counter()
for i in range(0, len(kb), max(1, len(kb) // 1000)):
  kb.row_of(kb.ids[i])
lookup_us = (time.perf_counter() - t) / 1000 * 1e6
rss_index = hwm_mb()
tok = tokenizers.Tokenizer.from_file(text_encoder.default_model_dir() + "/tokenizer.json")
tok.no_padding()
t = time.perf_counter()
codes.build_name_artifacts(kb, tok)
codes_s = time.perf_counter() - t
print(json.dumps({"build_s": round(build_s, 2), "reopen_s": round(reopen_s, 4),
                  "id_lookup_us": round(lookup_us, 1), "rss_mb_after_imports": rss_before,
                  "peak_rss_mb_index": rss_index,
                  "codes_and_trie_s": round(codes_s, 2),
                  "peak_rss_mb_with_codes": hwm_mb()}))
"""


def bench_kb_build(num_entities, tmp):
  rng = np.random.default_rng(2)
  src = os.path.join(tmp, "Wiki6M_synthetic.jsonl")
  with open(src, "w") as f:
    for i in range(num_entities):
      title = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 5)))).title() + f" {i}"
      f.write(json.dumps({"wikidata_id": f"Q{i + 1}", "wikipedia_title": title,
                          "wikipedia_summary": f"{title} is a thing. " * 4}) + "\n")
  out = subprocess.run([sys.executable, "-c", _BUILD, src, os.path.join(tmp, "index")],
                       capture_output=True, text=True, check=True)
  result = json.loads(out.stdout.strip().splitlines()[-1])
  result["entities"] = num_entities
  result["source_mb"] = round(os.path.getsize(src) / 2**20, 1)
  return result


def bench_world_recall(small, tmp):
  from rew_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  from rew_jax.kb import candidates  # pylint: disable=g-import-not-at-top
  config = synthetic.default_config()
  if small:
    config.num_entities, config.num_web_images = 60, 300
  config.contact_sheet = False
  world = os.path.join(tmp, "world")
  synthetic.generate(config, world)
  truth = {}
  with open(os.path.join(world, "truth", "web_truth.jsonl")) as f:
    for line in f:
      t = json.loads(line)
      truth[t["image_id"]] = t
  ks = (1, 5, 10, 20)
  results = {}
  for method in candidates.METHODS:
    c = candidates.default_config()
    c.data.path = world
    c.retrieval.k = max(ks)
    c.retrieval.method = method
    c.artifacts.codes = False
    start = time.perf_counter()
    out = candidates.run_candidates(c, os.path.join(tmp, f"work_{method}"), log=lambda *_: None)
    seconds = time.perf_counter() - start
    hits, per_kind = collections.Counter(), collections.defaultdict(collections.Counter)
    for rec in candidates.read_candidates(out):
      t = truth[rec["image_id"]]
      ids = [cand["entity_id"] for cand in rec["candidates"]]
      per_kind[t["caption_kind"]]["n"] += 1
      for k in ks:
        hit = t["entity_id"] in ids[:k]
        hits[k] += hit
        per_kind[t["caption_kind"]][k] += hit
    n = len(truth)
    results[method] = {
        "images": n, "seconds": round(seconds, 2),
        "recall": {f"@{k}": round(hits[k] / n, 4) for k in ks},
        "recall_by_caption_kind": {kind: {f"@{k}": round(c[k] / c["n"], 4) for k in ks}
                                   for kind, c in sorted(per_kind.items())}}
  return results


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="small sizes, < 60 s")
  parser.add_argument("--entities", type=int, default=None, help="N for the top-k part")
  parser.add_argument("--queries", type=int, default=4096)
  parser.add_argument("--chunk-rows", type=int, default=16384)
  parser.add_argument("--query-block", type=int, default=4096)
  parser.add_argument("--rounds", type=int, default=3, help="top-k rounds (median)")
  parser.add_argument("--no-baseline", action="store_true",
                      help="skip faiss (e.g. 6M × 65k on an accelerator: hours on CPU)")
  parser.add_argument("--resident-gib", type=float, default=2.0,
                      help="keep the entity matrix on the devices up to this size")
  parser.add_argument("--titles", type=int, default=None, help="titles to embed")
  parser.add_argument("--kb-entities", type=int, default=None, help="entities for the build")
  parser.add_argument("--skip", default="", help="comma list of parts to skip: "
                      "topk,encoder,kb,world")
  args = parser.parse_args()
  skip = set(filter(None, args.skip.split(",")))
  n = args.entities or (32_768 if args.quick else 1_000_000)
  titles = args.titles or (1_024 if args.quick else 20_000)
  kb_entities = args.kb_entities or (20_000 if args.quick else 1_000_000)
  report = {"benchmark": "retrieval", "quick": args.quick}
  t0 = time.perf_counter()
  if "topk" not in skip:
    topk = bench_topk(n, args.queries, 384, 10, args.chunk_rows, args.query_block,
                      args.rounds, baseline=not args.no_baseline,
                      resident_bytes=int(args.resident_gib * 2**30))
    print("top-k:", json.dumps(topk))
    report.update({k: topk[k] for k in ("ours_s", "baseline", "baseline_s", "speedup",
                                        "speedup_jax")})
    report["topk"] = topk
  if "encoder" not in skip:
    report["encoder"] = bench_encoder(titles)
    print("encoder:", json.dumps(report["encoder"]))
  with tempfile.TemporaryDirectory() as tmp:
    if "kb" not in skip:
      report["kb_build"] = bench_kb_build(kb_entities, tmp)
      print("kb build:", json.dumps(report["kb_build"]))
    if "world" not in skip:
      report["world_recall"] = bench_world_recall(args.quick, tmp)
      print("world recall:", json.dumps(report["world_recall"]))
  report["total_s"] = round(time.perf_counter() - t0, 1)
  print(json.dumps(report))


if __name__ == "__main__":
  main()
