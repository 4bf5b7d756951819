"""GiT train step and beam decoding, side by side with HF transformers GIT (torch CPU).

    python benchmarks/model.py --quick     # < 60 s on 2 cores (a small GiT)
    python benchmarks/model.py             # ViT-B/16 at 224 + 6-layer decoder, batch 8

Both sides get the same architecture, batch and sequence lengths, randomly initialised, and
run in fresh processes, alternating ours / theirs for --rounds (default 3; medians, spreads
and per-round ratios reported, with the CPU model and load):
  (a) train step throughput, examples/s: forward + backward + AdamW update (dropout on);
  (b) beam-4 decoding throughput, generated tokens/s, every hypothesis run to max_len
      (ours: KV cache, image encoded once per example; HF: `generate(num_beams=4)`);
  (c) peak resident memory of each side's process (MiB), measured in separate processes so
      that neither side's allocations count against the other.
On a GPU/TPU, `--mfu --batch 256` instead reports the MFU of GiT-Large train steps
(bfloat16, scanned + remat layers, FSDP over all devices), the peak device memory and beam-4
decoding throughput; on CPU `--mfu --quick` runs that path on a small model as a smoke check
(benchmarks/accelerator.sh runs it with the other accelerator figures).
The last stdout line is one JSON object: {"benchmark", per figure {"ours", "baseline",
"speedup"}, ...}. torch and transformers are the `test` extra; without them the baseline
figures are null.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

QUICK = dict(variant="Ti/16", image_size=64, vit=dict(depth=4),
             decoder=dict(num_layers=2, hidden_size=256, num_heads=4, mlp_dim=1024),
             batch=8, target_len=12, decode_len=6, train_steps=2, decode_reps=1)
FULL = dict(variant="B/16", image_size=224, vit=dict(),
            decoder=dict(num_layers=6, hidden_size=768, num_heads=12, mlp_dim=3072),
            batch=8, target_len=20, decode_len=10, train_steps=4, decode_reps=2)
VOCAB, BOS, EOS = 30522, 101, 102


def model_config(setup):
  return dict(variant=setup["variant"], image_size=setup["image_size"], vit=setup["vit"],
              decoder=dict(setup["decoder"], dropout=0.1), vocab_size=VOCAB,
              max_prompt_len=1, max_target_len=max(setup["target_len"], setup["decode_len"]))


def data(setup, seed=0):
  rng = np.random.default_rng(seed)
  b, s = setup["batch"], setup["image_size"]
  images = rng.normal(size=(b, s, s, 3)).astype(np.float32)
  ids = rng.integers(1000, VOCAB, size=(b, setup["target_len"] + 1)).astype(np.int32)
  ids[:, 0] = BOS
  return images, ids


def peak_rss_mib():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------
# Ours.


def run_ours(setup):
  import functools

  import flax.linen as nn
  import jax
  import optax

  from rew_jax.models import decoding, git

  config = model_config(setup)
  model = git.GiT(config)
  images, ids = data(setup)
  prompt = np.zeros((setup["batch"], 1), np.int32)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), images[:1], prompt[:1],
                                        ids[:1, :-1]))
  tx = optax.adamw(1e-4)
  opt_state = tx.init(params)

  def loss_fn(p, rng):
    logits = model.apply(p, images, prompt, ids[:, :-1], train=True, rngs={"dropout": rng})
    return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(p, o, rng):
    loss, grads = jax.value_and_grad(loss_fn)(p, rng)
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o, loss

  rng = jax.random.key(1)
  params, opt_state, loss = train_step(params, opt_state, rng)  # Compile.
  jax.block_until_ready(loss)
  start = time.perf_counter()
  for i in range(setup["train_steps"]):
    params, opt_state, loss = train_step(params, opt_state, jax.random.fold_in(rng, i))
  jax.block_until_ready(loss)
  train_s = (time.perf_counter() - start) / setup["train_steps"]

  # eos_id -1 matches no token: every beam runs to max_len, as min_new_tokens does for HF.
  beam = jax.jit(functools.partial(decoding.beam_search, model, num_beams=4,
                                   max_len=setup["decode_len"], eos_id=-1))
  jax.block_until_ready(beam(params, images, prompt))  # Compile.
  start = time.perf_counter()
  for _ in range(setup["decode_reps"]):
    out = jax.block_until_ready(beam(params, images, prompt))
  decode_s = (time.perf_counter() - start) / setup["decode_reps"]
  del out
  return dict(train_examples_per_s=setup["batch"] / train_s,
              decode_tokens_per_s=setup["batch"] * setup["decode_len"] / decode_s,
              peak_rss_mib=peak_rss_mib(), loss=float(loss))


# ---------------------------------------------------------------------------------------------
# HF transformers GIT.


def run_hf(setup):
  import torch
  import transformers

  dec, patch = setup["decoder"], int(setup["variant"].split("/")[1])
  from rew_jax.models import git_config
  vit = git_config.parse_config(model_config(setup)).vit
  config = transformers.GitConfig(
      vision_config=dict(hidden_size=vit.width, intermediate_size=vit.mlp_dim,
                         num_hidden_layers=vit.depth, num_attention_heads=vit.num_heads,
                         image_size=setup["image_size"], patch_size=patch),
      hidden_size=dec["hidden_size"], num_hidden_layers=dec["num_layers"],
      num_attention_heads=dec["num_heads"], intermediate_size=dec["mlp_dim"],
      vocab_size=VOCAB, max_position_embeddings=64, hidden_dropout_prob=0.1,
      attention_probs_dropout_prob=0.0)
  torch.manual_seed(0)
  model = transformers.GitForCausalLM(config)
  images, ids = data(setup)
  pixels = torch.tensor(images.transpose(0, 3, 1, 2))
  ids = torch.tensor(ids, dtype=torch.long)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
  model.train()

  def step():
    loss = model(input_ids=ids, pixel_values=pixels, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss)

  step()  # Warm-up.
  start = time.perf_counter()
  for _ in range(setup["train_steps"]):
    loss = step()
  train_s = (time.perf_counter() - start) / setup["train_steps"]

  model.eval()
  n = setup["decode_len"]
  gen = lambda: model.generate(pixel_values=pixels, input_ids=ids[:, :1], num_beams=4,
                               max_new_tokens=n, min_new_tokens=n, do_sample=False,
                               eos_token_id=EOS, pad_token_id=0)
  with torch.no_grad():
    gen()  # Warm-up.
    start = time.perf_counter()
    for _ in range(setup["decode_reps"]):
      gen()
  decode_s = (time.perf_counter() - start) / setup["decode_reps"]
  return dict(train_examples_per_s=setup["batch"] / train_s,
              decode_tokens_per_s=setup["batch"] * n / decode_s,
              peak_rss_mib=peak_rss_mib(), loss=loss)


# ---------------------------------------------------------------------------------------------
# MFU on an accelerator.


def run_mfu(batch, steps, smoke=False, decode_batch=64, decode_len=16):
  """GiT-Large bf16 train steps (scanned + remat layers, FSDP over every device): step time,
  MFU against `rew_jax.metrics.peak_flops_per_device`, peak device memory; then beam-4
  decoding of `decode_len` tokens for `decode_batch` images (generated tokens/s)."""
  import functools

  import jax
  import optax

  from rew_jax import metrics, sharding
  from rew_jax.models import decoding, flops, git, git_config

  config = git.default_config()
  config.dtype, config.remat, config.scan_layers = "bfloat16", True, True
  config.max_target_len = max(config.max_target_len, decode_len)
  if smoke:  # A CPU check of this code path with a small model.
    config.variant, config.image_size, config.vit.depth = "Ti/16", 64, 2
    config.decoder.num_layers, config.max_prompt_len, config.max_target_len = 1, 4, 8
    decode_len = min(decode_len, 4)
  model = git.GiT(config)
  spec = git_config.parse_config(config)
  mesh = sharding.make_mesh({"fsdp": -1})
  rules = sharding.DEFAULT_RULES
  images, prompt, target = git.dummy_inputs(spec, batch)
  params, shardings = sharding.init_sharded(model, jax.random.key(0), images[:1], prompt[:1],
                                            target[:1], mesh=mesh, rules=rules)
  tx = optax.adamw(1e-5)
  opt_state = tx.init(params)
  batch_arrays = sharding.host_batch_to_global(
      dict(images=np.asarray(images), prompt=np.asarray(prompt),
           target=np.ones(target.shape, np.int32)), mesh)

  def loss_fn(p, b, rng):
    logits = model.apply(p, b["images"], b["prompt"], b["target"], train=True,
                         rngs={"dropout": rng})
    return optax.softmax_cross_entropy_with_integer_labels(logits, b["target"]).mean()

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(p, o, b, rng):
    loss, grads = jax.value_and_grad(loss_fn)(p, b, rng)
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o, loss

  with sharding.use(mesh, rules):
    params, opt_state, loss = train_step(params, opt_state, batch_arrays, jax.random.key(1))
    jax.block_until_ready(loss)
    start = time.perf_counter()
    for i in range(steps):
      params, opt_state, loss = train_step(params, opt_state, batch_arrays, jax.random.key(i))
    jax.block_until_ready(loss)
    step_s = (time.perf_counter() - start) / steps
    memory = jax.devices()[0].memory_stats() or {}  # None on CPU.

    d_images, d_prompt, _ = git.dummy_inputs(spec, decode_batch)
    # eos_id -1 matches no token: every beam runs to max_len.
    beam = jax.jit(functools.partial(decoding.beam_search, model, num_beams=4,
                                     max_len=decode_len, eos_id=-1))
    jax.block_until_ready(beam(params, d_images, d_prompt))  # Compile.
    start = time.perf_counter()
    jax.block_until_ready(beam(params, d_images, d_prompt))
    decode_s = time.perf_counter() - start
  peak = metrics.peak_flops_per_device()
  achieved = flops.train_flops_per_example(config) * batch / step_s / jax.device_count()
  peak_bytes = memory.get("peak_bytes_in_use")
  return dict(device=jax.devices()[0].device_kind, devices=jax.device_count(), batch=batch,
              variant=config.variant, step_s=round(step_s, 4),
              tflops_per_device=round(achieved / 1e12, 3),
              peak_flops_per_device=peak, mfu=round(achieved / peak, 4) if peak else None,
              peak_memory_gib=round(peak_bytes / 2**30, 2) if peak_bytes else None,
              decode_batch=decode_batch, decode_len=decode_len, beams=4,
              decode_tokens_per_s=round(decode_batch * decode_len / decode_s, 1))


# ---------------------------------------------------------------------------------------------


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return "unknown"


def jax_backend():
  import jax
  return jax.default_backend()


def child(side, quick):
  setup = QUICK if quick else FULL
  if side == "ours":  # XLA:CPU as `python -m rew_jax` sets it up (rew_jax/xla_cpu.py).
    from rew_jax import xla_cpu  # pylint: disable=g-import-not-at-top
    xla_cpu.set_default_flags()
  out = run_ours(setup) if side == "ours" else run_hf(setup)
  print(json.dumps(out))


def run_side(side, quick):
  cmd = [sys.executable, __file__, "--side", side] + (["--quick"] if quick else [])
  env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
  if proc.returncode:
    sys.stderr.write(proc.stderr[-3000:])
    return None
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--side", choices=["ours", "hf"], help=argparse.SUPPRESS)
  parser.add_argument("--mfu", action="store_true", help="GiT-Large MFU on an accelerator")
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--decode-batch", type=int, default=64, help="--mfu: images decoded")
  parser.add_argument("--steps", type=int, default=0, help="--mfu: timed train steps")
  parser.add_argument("--rounds", type=int, default=3,
                      help="interleaved rounds per side (medians and spreads reported)")
  args = parser.parse_args(argv)
  if args.side:
    child(args.side, args.quick)
    return 0
  if args.mfu:
    result = run_mfu(args.batch, steps=args.steps or (3 if args.quick else 10),
                     smoke=args.quick and jax_backend() == "cpu",
                     decode_batch=args.decode_batch)
    print(json.dumps(dict(benchmark="model_mfu", **result)))
    return 0

  setup = QUICK if args.quick else FULL
  start = time.perf_counter()
  try:
    import torch  # noqa: F401
    import transformers  # noqa: F401
    have_hf = True
  except ImportError:
    print("torch/transformers missing (pip install -e .[test]): no baseline")
    have_hf = False
  runs = {"ours": [], "hf": []}
  for _ in range(args.rounds):  # Interleaved: both sides see the same load on a shared host.
    ours_run = run_side("ours", args.quick)
    if ours_run is None:
      raise SystemExit("our side failed (see stderr)")
    runs["ours"].append(ours_run)
    if have_hf:
      hf_run = run_side("hf", args.quick)
      if hf_run is not None:
        runs["hf"].append(hf_run)

  def figure(key, higher_is_better=True):
    mine = [r[key] for r in runs["ours"]]
    theirs = [r[key] for r in runs["hf"]]
    ours, base = float(np.median(mine)), float(np.median(theirs)) if theirs else None
    speed = None
    if base:
      speed = ours / base if higher_is_better else base / ours
    # Per-round ratios show how far one round's figure can be trusted.
    pairs = [(m / t if higher_is_better else t / m) for m, t in zip(mine, theirs)]
    return dict(ours=round(ours, 2), baseline=None if base is None else round(base, 2),
                speedup=None if speed is None else round(speed, 2),
                ours_spread=[round(min(mine), 2), round(max(mine), 2)],
                baseline_spread=[round(min(theirs), 2), round(max(theirs), 2)] if theirs else None,
                round_speedups=[round(p, 2) for p in pairs])

  result = dict(
      benchmark="model", mode="quick" if args.quick else "full",
      config=dict(variant=setup["variant"], image_size=setup["image_size"],
                  decoder_layers=setup["decoder"]["num_layers"],
                  decoder_width=setup["decoder"]["hidden_size"], batch=setup["batch"],
                  target_len=setup["target_len"], decode_len=setup["decode_len"], beams=4),
      train_examples_per_s=figure("train_examples_per_s"),
      decode_tokens_per_s=figure("decode_tokens_per_s"),
      peak_rss_mib=figure("peak_rss_mib", higher_is_better=False),
      baseline_name="transformers GitForCausalLM (torch CPU)", rounds=args.rounds,
      cpu=cpu_model(), load_avg_1m=round(os.getloadavg()[0], 2),
      wall_s=round(time.perf_counter() - start, 1))
  for key in ("train_examples_per_s", "decode_tokens_per_s", "peak_rss_mib"):
    f = result[key]
    print(f"{key:24s} ours {f['ours']:>10} baseline {f['baseline']!s:>10} "
          f"speedup {f['speedup']}")
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
