"""Input pipeline throughput: images/s of the training pipeline against tf.data's.

    python benchmarks/input_pipeline.py --quick        # < 60 s on 2 cores
    python benchmarks/input_pipeline.py --records 2048 --batches 40 --image-size 480

Measures the REW training pipeline end to end (ArrayRecord read → msgpack decode → task
mixture → JPEG decode + inception crop to 224 (fused: libjpeg-turbo through simplejpeg, at
reduced scale when the window allows, then OpenCV's bilinear resize without antialiasing, as
tf.image.resize's default) → CLIP normalise → tokenize + pad → batch 64)
over synthetic JPEG records written to a temporary directory. Side by side, an equivalent
tf.data pipeline over the same JPEG bytes and pre-tokenized targets (tf.data has no
ArrayRecord reader and no WordPiece op in core TF, which favours it), in this process when
TensorFlow imports, else in benchmarks/.venv-tf, which `bash benchmarks/tf_comparator.sh`
prepares once (TensorFlow conflicts with rew_jax's pins).

The last stdout line is one JSON object: {"benchmark", "ours", "baseline", "speedup", ...}.
Rounds alternate every setting of ours and tf.data; each figure is a median over the rounds,
`ours` the pipeline's default setting (workers and threads from the core count; tf.data
autotunes its own), the other worker settings listed beside it;
`baseline` is null when no TensorFlow is found. `per_core_efficiency` divides each side by
the cores times a one-thread Pillow + numpy loop doing the same image work.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

if __name__ == "__main__":
  # Grain reads an absl flag when it starts workers (upstream grain issue 1355).
  from absl import flags
  flags.FLAGS.mark_as_parsed()

from rew_jax import records  # noqa: E402
from rew_jax.data import pipeline  # noqa: E402

PP = pipeline.DEFAULT_TRAIN_PP  # The train spec: inception crop at 224, prompt 20, target 32.


def synthetic_jpeg(rng: np.random.Generator, size: int) -> bytes:
  """A smooth random picture (JPEG size close to a photo's), quality 90."""
  coarse = rng.integers(0, 256, (size // 32 + 1, size // 32 + 1, 3), dtype=np.uint8)
  img = Image.fromarray(coarse).resize((size, size * 3 // 4), Image.BICUBIC)
  noise = rng.integers(-12, 12, (size * 3 // 4, size, 3))
  img = Image.fromarray(np.clip(np.asarray(img, np.int16) + noise, 0, 255).astype(np.uint8))
  buf = io.BytesIO()
  img.save(buf, format="JPEG", quality=90)
  return buf.getvalue()


def write_records(directory: str, n: int, image_size: int, seed: int = 0) -> list[bytes]:
  rng = np.random.default_rng(seed)
  jpegs = [synthetic_jpeg(rng, image_size) for _ in range(min(n, 64))]
  recs = [records.RewRecord(
      image_id=f"web_{i:06d}", image=jpegs[i % len(jpegs)], caption=f"a photo of thing {i}",
      entity_id=f"Q{i}", entity_name=f"Golden Gate Bridge number {i}", curation_status="kept",
      rationale="an orange suspension bridge over a strait",
      qa=[{"question": "what colour is it?", "answer": "international orange"}])
      for i in range(n)]
  records.write_records(directory, recs, records_per_shard=256)
  return jpegs


def measure_ours(data_dir: str, *, batch_size: int, batches: int, num_workers: int,
                 num_threads: int) -> dict:
  ds = pipeline.train_dataset(
      data_dir, batch_size=batch_size, pp=PP, num_workers=num_workers, num_threads=num_threads,
      tasks={"weights": {"entity": 1.0, "rationale": 0.5, "qa": 0.5}},
      process_index=0, process_count=1)
  t0 = time.perf_counter()
  it = iter(ds)
  next(it)  # Start-up (workers, first batch) is reported apart.
  t1 = time.perf_counter()
  for _ in range(batches):
    batch = next(it)
  t2 = time.perf_counter()
  assert batch["image"].shape == (batch_size, 224, 224, 3)
  it.close()  # Stops the prefetch threads and worker processes before the next setting runs.
  num_workers, num_threads = pipeline.auto_parallelism(num_workers, num_threads)
  return {"workers": num_workers, "threads": num_threads,
          "images_per_s": round(batches * batch_size / (t2 - t1), 1),
          "startup_s": round(t1 - t0, 2)}


def measure_raw_pillow(jpegs: list[bytes], n: int, size: int = 224) -> dict:
  """The per-core ceiling: one thread decoding (reduced-scale draft when the crop allows),
  cropping a random window, resizing to 224 and normalising, with Pillow and numpy only."""
  rng = np.random.default_rng(0)
  mean = np.array([0.48145466, 0.4578275, 0.40821073], np.float32) * 255
  std = np.array([0.26862954, 0.26130258, 0.27577711], np.float32) * 255
  t0 = time.perf_counter()
  for i in range(n):
    img = Image.open(io.BytesIO(jpegs[i % len(jpegs)]))
    w, h = img.size
    side = int(min(w, h) * rng.uniform(0.3, 1.0))
    x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    img.draft("RGB", (max(size, w * size // side), max(size, h * size // side)))
    scale = img.size[0] / w
    box = tuple(int(v * scale) for v in (x, y, x + side, y + side))
    img = img.convert("RGB").resize((size, size), Image.BILINEAR, box=box)
    arr = (np.asarray(img, np.float32) - mean) / std
  assert arr.shape == (size, size, 3)
  return {"images_per_s": round(n / (time.perf_counter() - t0), 1)}


TF_VENV_PYTHON = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".venv-tf", "bin",
                              "python")


def tf_targets(n: int) -> np.ndarray:
  """The entity targets, tokenized here (core TF has no WordPiece op): [n, 32] int32."""
  from rew_jax.data.tokenizers import load_tokenizer  # pylint: disable=g-import-not-at-top
  tok = load_tokenizer("bert")
  targets = np.zeros((n, 32), np.int32)
  for i in range(n):
    ids = (tok.encode(f"Golden Gate Bridge number {i}") + [tok.eos_id])[:32]
    targets[i, :len(ids)] = ids
  return targets


def measure_tf(jpegs: list[bytes], tmp: str, *, batch_size: int, batches: int) -> dict | None:
  """tf.data in this process when TensorFlow imports, else in benchmarks/.venv-tf (made by
  benchmarks/tf_comparator.sh) on the same JPEGs and targets; None when neither exists."""
  targets = tf_targets(len(jpegs))
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import  # noqa: F401
  except ImportError:
    pass
  else:
    import input_pipeline_tf  # pylint: disable=g-import-not-at-top
    return input_pipeline_tf.tf_side(jpegs, targets, batch_size=batch_size, batches=batches)
  if not os.path.isfile(TF_VENV_PYTHON):
    return None
  inputs = os.path.join(tmp, "tf_inputs.npz")
  np.savez(inputs, targets=targets, jpegs=np.array(jpegs, dtype=object))
  child = os.path.join(os.path.dirname(os.path.abspath(__file__)), "input_pipeline_tf.py")
  out = subprocess.run([TF_VENV_PYTHON, child, inputs, "--batch-size", str(batch_size),
                        "--batches", str(batches)],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=""))
  if out.returncode:
    raise SystemExit(f"the tf.data side failed in {TF_VENV_PYTHON}:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="small run, under 60 s")
  parser.add_argument("--records", type=int, default=2048)
  parser.add_argument("--batches", type=int, default=30, help="timed batches per setting")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--image-size", type=int, default=480, help="width of the JPEGs (4:3)")
  parser.add_argument("--workers", default="-1,1,2",
                      help="worker settings; the first (-1: the pipeline's default, chosen "
                           "from the core count) is the one compared with tf.data")
  parser.add_argument("--threads", type=int, default=0, help="threads per process; 0: auto")
  parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians")
  args = parser.parse_args(argv)
  if args.quick:
    args.records, args.batches, args.rounds = 512, 6, 3

  with tempfile.TemporaryDirectory() as tmp:
    jpegs = write_records(tmp, args.records, args.image_size)
    mean_kb = np.mean([len(j) for j in jpegs]) / 1024
    print(f"{args.records} records, {args.image_size}x{args.image_size * 3 // 4} JPEGs "
          f"({mean_kb:.0f} KiB), batch {args.batch_size}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    # Rounds alternate our settings and the baseline, so that load from other processes on a
    # shared machine biases neither side. Each side's figure is its median over the rounds of
    # one setting chosen before measuring: tf.data's AUTOTUNE, and our default (the first
    # --workers value); the other settings are reported, never picked after the fact.
    ours_runs, tf_runs, raw_runs = {}, [], []
    for _ in range(args.rounds):
      for workers in (int(w) for w in args.workers.split(",")):
        ours_runs.setdefault(workers, []).append(measure_ours(
            tmp, batch_size=args.batch_size, batches=args.batches, num_workers=workers,
            num_threads=args.threads))
      b = measure_tf(jpegs, tmp, batch_size=args.batch_size, batches=args.batches)
      if b is not None:
        tf_runs.append(b)
      raw_runs.append(measure_raw_pillow(jpegs, n=max(32, args.batches * 4)))
    median = lambda rs: float(np.median([r["images_per_s"] for r in rs]))
    results = [dict(runs[-1], images_per_s=median(runs),
                    rounds=[r["images_per_s"] for r in runs]) for runs in ours_runs.values()]
    for r in results:
      print(f"  grain, {r['workers']} workers x {r['threads']} threads: "
            f"{r['images_per_s']:8.1f} images/s (median of {r['rounds']}; "
            f"start-up {r['startup_s']} s)")
    baseline = median(tf_runs) if tf_runs else None
    if baseline is None:
      print("  tf.data baseline: absent (tensorflow is not importable and benchmarks/.venv-tf "
            "does not exist: run `bash benchmarks/tf_comparator.sh` once)")
    else:
      print(f"  tf.data {tf_runs[0]['tf']}: {baseline:8.1f} images/s (median of "
            f"{[r['images_per_s'] for r in tf_runs]})")
    raw = median(raw_runs)
    print(f"  raw Pillow, one thread: {raw:8.1f} images/s per core")
  best = results[0]  # The setting named first, not the best after the fact.
  ours, cores = best["images_per_s"], os.cpu_count() or 1
  summary = {
      "benchmark": "input_pipeline", "unit": "images/s", "ours": ours,
      "ours_setting": {"workers": best["workers"], "threads": best["threads"]},
      "baseline": baseline,
      "speedup": round(ours / baseline, 3) if baseline else None,
      "baseline_name": f"tf.data {tf_runs[0]['tf']}" if tf_runs else
                       "absent: run benchmarks/tf_comparator.sh",
      "raw_pillow_per_core": raw,
      "per_core_efficiency": {"ours": round(ours / (raw * cores), 3),
                              "baseline": round(baseline / (raw * cores), 3) if baseline
                              else None},
      "settings": results, "records": args.records, "batch_size": args.batch_size,
      "image_size": args.image_size, "cpus": cores, "quick": args.quick,
      "rounds": args.rounds, "load_avg_1m": round(os.getloadavg()[0], 2),
  }
  print(json.dumps(summary))
  return 0


if __name__ == "__main__":
  sys.exit(main())
