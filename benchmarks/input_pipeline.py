"""Input pipeline throughput: images/s of the training pipeline, with 0, 1 and 2 workers.

    python benchmarks/input_pipeline.py --quick        # < 60 s on 2 cores
    python benchmarks/input_pipeline.py --records 2048 --batches 40 --image-size 480

Measures the REW training pipeline end to end (ArrayRecord read → msgpack decode → task
mixture → JPEG decode + inception crop to 224 (fused: libjpeg's reduced-scale decoding when the
window allows) → CLIP normalise → tokenize + pad → batch 64)
over synthetic JPEG records written to a temporary directory. Side by side, when
`tensorflow` is importable (pip install tensorflow-cpu==2.21.0; not a dependency of
rew_jax), an equivalent tf.data pipeline over the same JPEG bytes and pre-tokenized
targets (tf.data has no ArrayRecord reader and no WordPiece op in core TF, which favours it).

The last stdout line is one JSON object: {"benchmark", "ours", "baseline", "speedup", ...};
`ours` is the best images/s over the worker settings, `baseline` null when TF is absent.
"""

from __future__ import annotations

import argparse
import io
import json
import os
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
  del it
  return {"workers": num_workers, "threads": num_threads,
          "images_per_s": round(batches * batch_size / (t2 - t1), 1),
          "startup_s": round(t1 - t0, 2)}


def measure_tf(jpegs: list[bytes], *, batch_size: int, batches: int) -> dict | None:
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  from rew_jax.data.tokenizers import load_tokenizer  # pylint: disable=g-import-not-at-top
  tok = load_tokenizer("bert")
  targets = np.zeros((len(jpegs), 32), np.int32)
  for i in range(len(jpegs)):
    ids = (tok.encode(f"Golden Gate Bridge number {i}") + [tok.eos_id])[:32]
    targets[i, :len(ids)] = ids
  mean = tf.constant([0.48145466, 0.4578275, 0.40821073])
  std = tf.constant([0.26862954, 0.26130258, 0.27577711])

  def preprocess(data, target):
    shape = tf.io.extract_jpeg_shape(data)
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        shape, tf.zeros([0, 0, 4], tf.float32), area_range=(0.08, 1.0),
        aspect_ratio_range=(3 / 4, 4 / 3), min_object_covered=0, use_image_if_no_bounding_boxes=True)
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    img = tf.io.decode_and_crop_jpeg(data, window, channels=3)
    img = tf.image.resize(img, (224, 224))
    return {"image": (img / 255.0 - mean) / std, "target": target}

  ds = (tf.data.Dataset.from_tensor_slices((jpegs, targets)).repeat().shuffle(256)
        .map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
  it = iter(ds)
  next(it)
  t1 = time.perf_counter()
  for _ in range(batches):
    batch = next(it)
  t2 = time.perf_counter()
  assert tuple(batch["image"].shape) == (batch_size, 224, 224, 3)
  return {"images_per_s": round(batches * batch_size / (t2 - t1), 1), "tf": tf.__version__}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="small run, under 60 s")
  parser.add_argument("--records", type=int, default=2048)
  parser.add_argument("--batches", type=int, default=30, help="timed batches per setting")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--image-size", type=int, default=480, help="width of the JPEGs (4:3)")
  parser.add_argument("--workers", default="0,1,2")
  parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
  parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; best kept")
  args = parser.parse_args(argv)
  if args.quick:
    args.records, args.batches, args.rounds = 512, 6, 1

  with tempfile.TemporaryDirectory() as tmp:
    jpegs = write_records(tmp, args.records, args.image_size)
    mean_kb = np.mean([len(j) for j in jpegs]) / 1024
    print(f"{args.records} records, {args.image_size}x{args.image_size * 3 // 4} JPEGs "
          f"({mean_kb:.0f} KiB), batch {args.batch_size}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    # Rounds alternate our settings and the baseline, keeping each one's best, so that load
    # from other processes on a shared machine biases neither side.
    best, baseline = {}, None
    for _ in range(args.rounds):
      for workers in (int(w) for w in args.workers.split(",")):
        r = measure_ours(tmp, batch_size=args.batch_size, batches=args.batches,
                         num_workers=workers, num_threads=args.threads)
        if workers not in best or r["images_per_s"] > best[workers]["images_per_s"]:
          best[workers] = r
      b = measure_tf(jpegs, batch_size=args.batch_size, batches=args.batches)
      if b is not None and (baseline is None or b["images_per_s"] > baseline["images_per_s"]):
        baseline = b
    results = list(best.values())
    for r in results:
      print(f"  grain, {r['workers']} workers x {r['threads']} threads: "
            f"{r['images_per_s']:8.1f} images/s (start-up {r['startup_s']} s)")
    if baseline is None:
      print("  tf.data baseline: absent (tensorflow is not importable; "
            "pip install tensorflow-cpu==2.21.0 in the benchmark's environment to compare)")
    else:
      print(f"  tf.data {baseline['tf']}: {baseline['images_per_s']:8.1f} images/s")
  ours = max(r["images_per_s"] for r in results)
  summary = {
      "benchmark": "input_pipeline", "unit": "images/s", "ours": ours,
      "baseline": baseline["images_per_s"] if baseline else None,
      "speedup": round(ours / baseline["images_per_s"], 3) if baseline else None,
      "baseline_name": "tf.data" if baseline else "absent: tensorflow not installed",
      "settings": results, "records": args.records, "batch_size": args.batch_size,
      "image_size": args.image_size, "cpus": os.cpu_count(), "quick": args.quick,
      "rounds": args.rounds, "load_avg_1m": round(os.getloadavg()[0], 2),
  }
  print(json.dumps(summary))
  return 0


if __name__ == "__main__":
  sys.exit(main())
