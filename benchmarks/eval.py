"""OVEN-style evaluation throughput: the Grain evaluation input against the serial loader.

    python benchmarks/eval.py --quick      # < 2 min on 2 cores
    python benchmarks/eval.py              # 1024 questions at the demo's size, 512 at 224 px

Questions/s of OVEN evaluation, image files read and decoded + the model's prediction, in
two settings:
  demo: the embedded world's images (64-96 px JPEGs drawn by `synthetic_images`), the demo's
        pp (resize to 48) and GiT (mu/8 at 48, 4-layer ViT, 2-layer decoder; configs/demo.py);
  224:  640x480 photo-like JPEGs, `resize_crop(224)`, the same GiT at 224 with 16 px patches.
Both predict with beam-4 search (`generate`, the demo's target length), batch 64; the model
is randomly initialised and keeps BERT's whole vocabulary (the demo trims it), so the
prediction is heavier than the demo's: a conservative setting for the ratio.

Side by side, in one process and alternating rounds (median over --rounds):
  ours:   `evaluators.common.predict_source` over `evaluators.oven.Questions`, i.e.
          `pipeline.eval_input` (Grain threads read, decode and preprocess ahead of the
          prediction) then `predict_all`, exactly what the OVEN evaluator runs;
  serial: the loader evaluation used before (`evaluators/common.batches`): each batch's
          images read and preprocessed one after the other in Python, then predicted.
Also the input alone (batches made, no prediction), which bounds what overlap can give.

The last stdout line is one JSON object: {"benchmark": "eval", "settings": {name: {"ours",
"serial", "speedup", "input_only": {...}}}, "cpu_count", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

if __name__ == "__main__":
  # Grain reads an absl flag when it starts workers (upstream grain issue 1355).
  from absl import flags
  flags.FLAGS.mark_as_parsed()

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from rew_jax import config as config_lib  # noqa: E402
from rew_jax import model_setup  # noqa: E402
from rew_jax import storage  # noqa: E402
from rew_jax.data import ops as ops_lib  # noqa: E402
from rew_jax.data import oven_files  # noqa: E402
from rew_jax.data import pipeline  # noqa: E402
from rew_jax.data import synthetic_images as si  # noqa: E402
from rew_jax.evaluators import common  # noqa: E402
from rew_jax.evaluators import oven  # noqa: E402

import input_pipeline  # noqa: E402  (its photo-like JPEG maker)

PROMPT = "tokenize(key='prompt', bos=True, max_len=10)|pad(10, key='prompt')"
SETTINGS = {
    "demo": dict(image_size=48, variant="mu/8",
                 pp=f"decode|resize(48)|normalize('clip')|{PROMPT}"),
    "224": dict(image_size=224, variant="mu/16",
                pp=f"decode|resize_crop(224)|normalize('clip')|{PROMPT}"),
}
LOOKS = [si.Look(shape, colour, pattern) for shape, colour, pattern in (
    ("tower", "crimson", "plain"), ("dome", "cobalt", "striped"), ("lotus", "amber", "spotted"),
    ("kestrel", "jade", "checkered"))]


def write_questions(directory: str, setting: str, n: int) -> list[dict]:
  """n OVEN questions with their images in the OVEN layout under `directory`."""
  rng = np.random.default_rng(0)
  refs = []
  for i in range(n):
    image_id = f"oven_{i:08d}"
    if setting == "demo":
      jpeg = si.encode_jpeg(si.draw([LOOKS[i % 4]], rng, min_size=64, max_size=96))
    else:
      jpeg = input_pipeline.synthetic_jpeg(rng, 640)
    path = os.path.join(directory, image_id.split("_")[-1][:2], image_id + ".jpg")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
      f.write(jpeg)
    refs.append({"data_id": f"q{i}", "image_id": image_id, "question": "what is this?",
                 "entity_id": f"Q{i % 4}", "data_split": "entity_val_seen"})
  return refs


def model_and_predict(setting: dict):
  """The demo's GiT at the setting's size, initialised, and its jitted beam search."""
  config = config_lib.ConfigDict(dict(model=dict(
      name="git", variant=setting["variant"], image_size=setting["image_size"],
      vit=dict(width=128, depth=4, num_heads=4, mlp_dim=256, activation="gelu"),
      decoder=dict(num_layers=2, hidden_size=96, num_heads=4, mlp_dim=192),
      max_prompt_len=10, max_target_len=8)))
  setup = model_setup.setup_model(config)
  fns = setup.model.predict_fns(dict(num_beams=4))
  return setup.params, fns["generate"]


def serial_predict(predict_fn, params, refs, image_dir, pp_spec, batch_size):
  """The loader evaluation used before the Grain input (evaluators/common.batches and
  predict_all on one process): each image read and preprocessed in turn, the batch padded
  with copies of its first example, then predicted; outputs cut to the real rows."""
  pp = ops_lib.get_preprocess(pp_spec)
  parts = []
  for start in range(0, len(refs), batch_size):
    items = refs[start:start + batch_size]
    loaded = [pp({"image": storage.read_bytes(oven_files.image_path(image_dir, r["image_id"])),
                  "prompt": r["question"], "image_id": r["image_id"]}) for r in items]
    keys = [k for k, v in loaded[0].items()
            if isinstance(v, (np.ndarray, np.generic, int, float)) and not k.startswith("_")]
    loaded += [loaded[0]] * (batch_size - len(items))
    batch = {k: np.stack([np.asarray(ex[k]) for ex in loaded]) for k in keys}
    batch["mask"] = np.array([1] * len(items) + [0] * (batch_size - len(items)), np.int32)
    if predict_fn is None:
      parts.append({"n": np.zeros(len(items))})
      continue
    out = predict_fn(params, batch)
    parts.append({k: np.asarray(v)[:len(items)] for k, v in out.items()})
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def ours_predict(predict_fn, params, refs, image_dir, pp_spec, batch_size):
  options = oven.Options(pp=pp_spec, batch_size=batch_size)
  source = oven.Questions(refs, image_dir)
  if predict_fn is not None:
    return common.predict_source(predict_fn, params, source, options)
  batches, _ = pipeline.eval_input(source, pp_spec, batch_size=batch_size)
  return {"n": np.concatenate([np.asarray(b["mask"]) for b in batches])}


def bench_setting(name: str, n: int, rounds: int, batch_size: int, tmp: str) -> dict:
  setting = SETTINGS[name]
  image_dir = os.path.join(tmp, name)
  refs = write_questions(image_dir, name, n)
  params, predict_fn = model_and_predict(setting)
  # Compile once, and check that both give the same predictions.
  warm = refs[:batch_size]
  a = serial_predict(predict_fn, params, warm, image_dir, setting["pp"], batch_size)
  b = ours_predict(predict_fn, params, warm, image_dir, setting["pp"], batch_size)
  same = all(np.array_equal(a[k], b[k]) for k in a)
  times = {"ours": [], "serial": [], "ours_input": [], "serial_input": []}
  for _ in range(rounds):
    for key, fn, pred in (("serial", serial_predict, predict_fn), ("ours", ours_predict, predict_fn),
                          ("serial_input", serial_predict, None),
                          ("ours_input", ours_predict, None)):
      start = time.perf_counter()
      jax.block_until_ready(fn(pred, params, refs, image_dir, setting["pp"], batch_size))
      times[key].append(time.perf_counter() - start)
  qps = {k: n / statistics.median(v) for k, v in times.items()}
  result = {
      "questions": n, "batch_size": batch_size, "image_size": setting["image_size"],
      "ours": round(qps["ours"], 1), "serial": round(qps["serial"], 1),
      "speedup": round(qps["ours"] / qps["serial"], 2),
      "rounds_speedup": [round(s / o, 2) for o, s in zip(times["ours"], times["serial"])],
      "input_only": {"ours": round(qps["ours_input"], 1),
                     "serial": round(qps["serial_input"], 1),
                     "speedup": round(qps["ours_input"] / qps["serial_input"], 2)},
      "same_predictions": bool(same)}
  # What the prediction alone takes (the same batches, preprocessed beforehand): the floor
  # of any input pipeline's time on these cores.
  batches = list(pipeline.eval_input(oven.Questions(refs, image_dir), setting["pp"],
                                            batch_size=batch_size)[0])
  start = time.perf_counter()
  for batch in batches:
    jax.block_until_ready(predict_fn(params, {k: v for k, v in batch.items()
                                              if k != pipeline.INDEX_KEY}))
  result["predict_only_s"] = round(time.perf_counter() - start, 2)
  result["predict_only_qps"] = round(n / result["predict_only_s"], 1)
  print(f"{name}: ours {result['ours']} q/s, serial {result['serial']} q/s → "
        f"{result['speedup']}x (input alone {result['input_only']['speedup']}x; prediction "
        f"alone {result['predict_only_qps']} q/s)", flush=True)
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--questions", type=int, default=None, help="per setting (demo)")
  parser.add_argument("--rounds", type=int, default=None)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--settings", default="demo,224")
  args = parser.parse_args()
  n = args.questions or (256 if args.quick else 1024)
  rounds = args.rounds or (1 if args.quick else 3)
  out = {"benchmark": "eval", "quick": args.quick, "cpu_count": os.cpu_count(),
         "backend": jax.default_backend(), "settings": {}}
  t0 = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    for name in args.settings.split(","):
      size = n if name == "demo" else max(args.batch_size, n // 2)
      out["settings"][name] = bench_setting(name, size, rounds, args.batch_size, tmp)
  out["total_s"] = round(time.perf_counter() - t0, 1)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
