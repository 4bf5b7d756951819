"""The tf.data side of benchmarks/input_pipeline.py, importable without rew_jax or JAX: run
in-process when TensorFlow imports beside rew_jax, else in benchmarks/.venv-tf (made by
benchmarks/tf_comparator.sh) as

    benchmarks/.venv-tf/bin/python benchmarks/input_pipeline_tf.py INPUTS.npz --batch-size 64 --batches 30

INPUTS.npz holds `jpegs` (the same JPEG bytes as ours) and `targets` ([n, 32] int32, the
entity targets tokenized by the parent: core TF has no WordPiece op). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def tf_side(jpegs: list[bytes], targets: np.ndarray, *, batch_size: int, batches: int) -> dict:
  """The same work in tf.data: decode + inception crop (fused), resize to 224, normalise."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
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


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("inputs")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--batches", type=int, default=30)
  args = parser.parse_args()
  data = np.load(args.inputs, allow_pickle=True)
  print(json.dumps(tf_side(list(data["jpegs"]), data["targets"], batch_size=args.batch_size,
                           batches=args.batches)))


if __name__ == "__main__":
  main()
