"""Curation runner: overhead per record, and throughput against a slow LLM endpoint.

    python benchmarks/curation.py --quick      # < 60 s on 2 cores
    python benchmarks/curation.py --records 4000 --latency 0.2 --concurrency 1,8,32,128
    python benchmarks/curation.py --quick --dask --dask-shard-records 120   # + DaskRunner, 1 and 2 workers
    python benchmarks/curation.py --quick --batch --batch-records 400     # + batch jobs vs online

1. Overhead: `rew_jax.curation.run.curate` end to end (read candidates, image bytes, prompt,
   "LLM" call, parse + validate, name resolution, journal line, ArrayRecord shard, manifest,
   report) with a zero-latency backend that answers the first candidate in the real JSON
   format. Goal: < 2 ms per record.
2. Scaling: the `openai` backend over real HTTP against a stub server on 127.0.0.1 that
   answers every request after `--latency` seconds (default 200 ms), at concurrency 1, 8,
   32. Goal: records/s close to concurrency / latency.
3. With `--dask`: the Beam pipeline (`rew_jax.curation.beam`) on the DaskRunner against a
   dask.distributed LocalCluster of 1, then 2 worker processes, with the same stub (each
   worker keeps `--dask-concurrency` calls in flight): records/s (goal: 2 workers ≥ 1.8× 1
   worker) and the runner's overhead: a fixed cost per run (pipeline submission, graph,
   manifest, report) and a cost per record beyond waiting for the endpoint (latency /
   (workers × concurrency)), from two run sizes (goal: < 2 ms per record).

4. With `--batch`: the same records through `curation.mode_of_calls="batch"` (the OpenAI
   Batch API) beside the online path, both against one stub (tests/curation/batchstub.py:
   online calls wait `--latency`, batch jobs finish at their second poll): records/s of
   each, and the cost per 1k records from each run's report at `--price-in/--price-out`
   USD per Mtok online (batch: half, the services' list discount). The stub counts tokens
   as a service would bill them, roughly: prompt characters / 4 plus 258 per image, reply
   characters / 4. The batch figure is the driver's own speed (request files, uploads,
   polls, replays); a real job adds the service's turnaround, up to the completion window.

The world and its BM25 candidates are built in a temporary directory first (not timed).
The last stdout line is one JSON object: {"benchmark": "curation", ...}.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import re
import shutil
import tempfile
import threading
import time

from rew_jax import config as config_lib
from rew_jax.curation import run
from rew_jax.curation import section
from rew_jax.curation.backends.base import Backend, Reply
from rew_jax.data import synthetic
from rew_jax.kb import candidates

_FIRST = re.compile(r'^1\. ("(?:[^"\\]|\\.)*")', re.MULTILINE)


def _answer(prompt_text: str) -> str:
  m = _FIRST.search(prompt_text)
  name = json.loads(m.group(1)) if m else "none"
  return json.dumps({"entity_name": name, "justification": "visible", "rationale": "r",
                     "qa": [{"question": "What colour?", "answer": "red"}]})


class Instant(Backend):
  """Zero latency: answers the first candidate."""
  name = "instant"

  def generate(self, prompt, timeout_s):
    return Reply(_answer(prompt.text), 100, 20)


def _stub_server(latency: float):
  class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # Headers and body go out in two writes.

    def log_message(self, *args):
      pass

    def do_POST(self):
      body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
      text = next(p["text"] for p in body["messages"][-1]["content"] if p["type"] == "text")
      time.sleep(latency)
      data = json.dumps({"choices": [{"message": {"content": _answer(text)},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 100, "completion_tokens": 20}}).encode()
      self.send_response(200)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(data)))
      self.end_headers()
      self.wfile.write(data)

  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  server.daemon_threads = True
  server.block_on_close = False
  threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
  return server


def _make_world(root: str, num_images: int) -> None:
  c = synthetic.default_config()
  c.num_web_images = num_images
  c.contact_sheet = False
  c.oven = config_lib.ConfigDict(dict(entity_train=1, entity_val=2, entity_test=2,
                                      query_train=1, query_val=2, query_test=2))
  synthetic.generate(c, os.path.join(root, "world"))
  cc = candidates.default_config()
  cc.retrieval.method = "bm25"
  cc.artifacts.codes = False
  cc.data.records_per_shard = 1000
  candidates.run_candidates(cc, root, log=lambda *_: None)


def _subset(root: str, n: int, out: str) -> str:
  """A candidates directory holding the first n lines of the world's candidates."""
  os.makedirs(out, exist_ok=True)
  lines = []
  for name in sorted(os.listdir(os.path.join(root, "candidates"))):
    if name.startswith("candidates-") and name.endswith(".jsonl"):
      lines += open(os.path.join(root, "candidates", name)).readlines()
  with open(os.path.join(out, "candidates-00000-of-00001.jsonl"), "w") as f:
    f.writelines(lines[:n])
  return out


def _config(backend: str, concurrency: int, cand_dir: str, root: str):
  config = config_lib.ConfigDict()
  config.curation = section.default_config(backend)
  config.curation.backend = backend
  config.curation.concurrency = concurrency
  config.curation.candidates_dir = cand_dir
  m = json.load(open(os.path.join(root, "candidates", "manifest.json")))
  config.curation.kb_source = m["kb"]["path"]
  config.curation.kb_index_dir = m["kb"]["index_dir"]
  config.curation.image_root = os.path.join(root, "world")
  config.curation.report_examples = 0
  return config


def _timed_curate(config, workdir, backend=None) -> float:
  shutil.rmtree(workdir, ignore_errors=True)
  start = time.perf_counter()
  run.curate(config, workdir, backend=backend, verbose=False)
  return time.perf_counter() - start


def _shards(root: str, num_shards: int, per_shard: int, out: str) -> str:
  """A candidates directory of `num_shards` shards of `per_shard` lines of the world's."""
  os.makedirs(out, exist_ok=True)
  lines = open(os.path.join(_subset(root, num_shards * per_shard, out + "_all"),
                            "candidates-00000-of-00001.jsonl")).readlines()
  for i in range(num_shards):
    with open(os.path.join(out, f"candidates-{i:05d}-of-{num_shards:05d}.jsonl"), "w") as f:
      f.writelines(lines[i * per_shard:(i + 1) * per_shard])
  return out


def _dask(root: str, url: str, latency: float, concurrency: int, num_shards: int,
          per_shard: int) -> dict:
  """records/s of the Beam pipeline on 1 and 2 Dask workers, and the runner's cost: a fixed
  part per run and a part per record, from two runs of different sizes (the fixed costs
  cancel in the difference)."""
  from dask import distributed  # pylint: disable=g-import-not-at-top
  from rew_jax.curation import beam  # pylint: disable=g-import-not-at-top
  from rew_jax.curation import beam_options  # pylint: disable=g-import-not-at-top
  small = max(1, per_shard // 4)
  sizes = {"warm": (2, 2), "small": (num_shards, small), "large": (num_shards, per_shard)}
  dirs = {k: _shards(root, n, m, os.path.join(root, f"cand_dask_{k}")) for k, (n, m) in
          sizes.items()}
  out = {}
  for workers in (1, 2):
    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
                                       processes=True, dashboard_address=":0")
    client = distributed.Client(cluster)
    seconds = {}
    try:
      for name, cand_dir in dirs.items():
        cfg = _config("openai", concurrency, cand_dir, root)
        cfg.curation.openai = dict(base_url=url, model="stub")
        cfg.beam = beam_options.default_config()
        cfg.beam.dask_address = cluster.scheduler_address
        start = time.perf_counter()
        beam.curate(cfg, os.path.join(root, f"w_dask_{workers}_{name}"), runner="dask",
                    log=lambda *_: None)
        seconds[name] = time.perf_counter() - start
    finally:
      client.close()
      cluster.close()
    n_small, n_large = num_shards * small, num_shards * per_shard
    per_record = (seconds["large"] - seconds["small"]) / (n_large - n_small)
    calls = latency / (workers * concurrency)  # Waiting for the endpoint, per record.
    out[workers] = {"records": n_large, "seconds": round(seconds["large"], 3),
                    "records_per_s": round(n_large / seconds["large"], 2),
                    "ideal_records_per_s": round(workers * concurrency / latency, 2),
                    "fixed_s_per_run": round(seconds["large"] - n_large * per_record, 3),
                    "overhead_ms_per_record": round(1000 * (per_record - calls), 3)}
    r = out[workers]
    print(f"DaskRunner, {workers} worker(s) × concurrency {concurrency}, {latency * 1000:.0f} ms "
          f"endpoint: {n_large} records in {seconds['large']:.2f} s → {r['records_per_s']:.1f} "
          f"records/s (ideal {r['ideal_records_per_s']:.1f}); runner: {r['fixed_s_per_run']:.2f} "
          f"s per run + {r['overhead_ms_per_record']:.2f} ms per record")
  out["speedup_2_vs_1"] = round(out[2]["records_per_s"] / out[1]["records_per_s"], 3)
  return out


def _billed_answer(body) -> tuple[int, dict]:
  """The stub's reply to a chat request: the first candidate, with the tokens a service
  would bill, roughly (characters / 4, and 258 per image)."""
  parts = body["messages"][-1]["content"]
  text = next(p["text"] for p in parts if p["type"] == "text")
  images = sum(p["type"] == "image_url" for p in parts)
  reply = _answer(text)
  return 200, {"choices": [{"message": {"content": reply}, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": len(text) // 4 + 258 * images,
                         "completion_tokens": len(reply) // 4}}


def _batch(root: str, num: int, latency: float, concurrency: int, price_in: float,
           price_out: float) -> dict:
  """records/s and USD per 1k records, online and through batch jobs, on one stub."""
  import sys  # pylint: disable=g-import-not-at-top
  # The tests' stub of the Batch API, so the benchmark measures the path the tests check.
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))), "tests", "curation"))
  import batchstub  # pylint: disable=g-import-not-at-top
  stub = batchstub.BatchStub(_billed_answer, online_latency_s=latency)
  cand = _subset(root, num, os.path.join(root, "cand_batch"))
  out = {}
  try:
    for mode in ("online", "batch"):
      cfg = _config("openai", concurrency, cand, root)
      cfg.curation.openai = dict(base_url=stub.url + "/v1", model="stub")
      cfg.curation.update(mode_of_calls=mode, price_per_mtok_in=price_in,
                          price_per_mtok_out=price_out, batch_poll_initial_s=0.02,
                          batch_poll_max_s=0.05)
      workdir = os.path.join(root, f"w_{mode}")
      shutil.rmtree(workdir, ignore_errors=True)
      start = time.perf_counter()
      report = run.curate(cfg, workdir, verbose=False)
      seconds = time.perf_counter() - start
      usage = report["usage"]
      pin, pout = ((report["batch"]["price_per_mtok_in"], report["batch"]["price_per_mtok_out"])
                   if mode == "batch" else (price_in, price_out))
      cost = (usage["input_tokens"] * pin + usage["output_tokens"] * pout) / 1e6
      out[mode] = {"records": num, "seconds": round(seconds, 3),
                   "records_per_s": round(num / seconds, 2),
                   "input_tokens": usage["input_tokens"],
                   "output_tokens": usage["output_tokens"],
                   "usd_per_1k_records": round(1000 * cost / num, 5)}
      if mode == "batch":
        out[mode]["jobs"] = report["batch"]["jobs"]
      r = out[mode]
      how = (f"concurrency {concurrency}, {latency * 1000:.0f} ms endpoint" if mode == "online"
             else f"{r['jobs']} job(s), the stub's instant turnaround")
      print(f"{mode:>6}: {num} records in {seconds:.2f} s → {r['records_per_s']:.1f} records/s"
            f" ({how}); ${r['usd_per_1k_records']:.4f} per 1k records")
  finally:
    stub.close()
  out["online_calls_in_batch_mode"] = stub.online_calls - out["online"]["records"]
  out["cost_ratio_batch_vs_online"] = round(out["batch"]["usd_per_1k_records"] /
                                            max(out["online"]["usd_per_1k_records"], 1e-12), 3)
  out["records_equal"] = _same_records(os.path.join(root, "w_online"),
                                       os.path.join(root, "w_batch"))
  return out


def _same_records(a: str, b: str) -> bool:
  from rew_jax import records  # pylint: disable=g-import-not-at-top
  read = lambda w: [records.encode(r) for r in records.read_records(os.path.join(w, "records"))]
  return read(a) == read(b)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--records", type=int, default=4000, help="records for the overhead run")
  parser.add_argument("--latency", type=float, default=0.2)
  parser.add_argument("--concurrency", default="1,8,32")
  parser.add_argument("--dask", action="store_true",
                      help="also the Beam pipeline on a local Dask cluster, 1 and 2 workers")
  parser.add_argument("--dask-concurrency", type=int, default=4)
  parser.add_argument("--dask-shards", type=int, default=8)
  parser.add_argument("--dask-shard-records", type=int, default=40)
  parser.add_argument("--batch", action="store_true",
                      help="also curation through batch jobs beside online calls, one stub")
  parser.add_argument("--batch-records", type=int, default=1000)
  parser.add_argument("--batch-concurrency", type=int, default=32)
  parser.add_argument("--price-in", type=float, default=2.5, help="USD per Mtok, online")
  parser.add_argument("--price-out", type=float, default=10.0, help="USD per Mtok, online")
  args = parser.parse_args()
  num = 1000 if args.quick else args.records
  levels = [int(x) for x in args.concurrency.split(",")]
  root = tempfile.mkdtemp(prefix="bench_curation_")
  try:
    _make_world(root, max(num, 40 * max(levels), args.batch_records if args.batch else 0))
    # 1. Overhead with a zero-latency backend (second run: the first pays KB/BM25 opening).
    cand = _subset(root, num, os.path.join(root, "cand_overhead"))
    cfg = _config("simulated", 1, cand, root)
    _timed_curate(cfg, os.path.join(root, "w_warm"), Instant())
    overhead = {}
    for conc in (1, 4):
      cfg.curation.concurrency = conc
      seconds = _timed_curate(cfg, os.path.join(root, f"w_overhead_{conc}"), Instant())
      overhead[conc] = 1000 * seconds / num
      print(f"overhead, concurrency {conc}: {num} records in {seconds:.2f} s → "
            f"{overhead[conc]:.3f} ms/record")
    # 2. Throughput against a 200 ms endpoint over HTTP.
    server = _stub_server(args.latency)
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    rps = {}
    for conc in levels:
      n = max(10, int(conc * 10 if args.quick else conc * 20))
      cand = _subset(root, n, os.path.join(root, f"cand_{conc}"))
      cfg = _config("openai", conc, cand, root)
      cfg.curation.openai = dict(base_url=url, model="stub")
      seconds = _timed_curate(cfg, os.path.join(root, f"w_http_{conc}"))
      rps[conc] = n / seconds
      print(f"{args.latency * 1000:.0f} ms endpoint, concurrency {conc:>3}: {n} records in "
            f"{seconds:.2f} s → {rps[conc]:.1f} records/s (ideal {conc / args.latency:.1f})")
    dask = (_dask(root, url, args.latency, args.dask_concurrency, args.dask_shards,
                  args.dask_shard_records) if args.dask else None)
    server.shutdown()
    batch = (_batch(root, args.batch_records, args.latency, args.batch_concurrency,
                    args.price_in, args.price_out) if args.batch else None)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  best = min(overhead.values())
  print(json.dumps({
      "benchmark": "curation", "quick": args.quick, "overhead_records": num,
      "overhead_ms_per_record": round(best, 3),
      "overhead_ms_per_record_by_concurrency": {str(k): round(v, 3) for k, v in overhead.items()},
      "overhead_goal_ms": 2.0, "latency_s": args.latency,
      "records_per_s": {str(k): round(v, 2) for k, v in rps.items()},
      "ideal_records_per_s": {str(k): round(k / args.latency, 2) for k in rps},
      "scaling_efficiency": {str(k): round(v * args.latency / k, 3) for k, v in rps.items()},
      **({"dask": {str(k): v for k, v in dask.items()}} if dask else {}),
      **({"batch": batch} if batch else {}),
  }))


if __name__ == "__main__":  # Dask's worker processes re-import this file.
  main()
