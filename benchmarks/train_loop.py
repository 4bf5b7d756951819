"""The train loop's overhead: full loop (data + step + metrics + checkpoint checks) against
the bare jitted step on the same config, and the time to the first step (compile).

    python benchmarks/train_loop.py --quick      # < 60 s on 2 cores, one round
    python benchmarks/train_loop.py --steps 100 --config configs/demo.py    # 3 rounds

The loop's steps/s comes from its own metrics.jsonl (measured after compilation); the bare
step runs the same `train_step` on one pre-made device batch, so it does no input work at all.
Loop and bare step alternate for --rounds; the ratio is the median of the rounds' ratios.
Goal: loop ≥ 95 % of the bare step's throughput. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from rew_jax import config as config_lib
from rew_jax import metrics as metrics_lib
from rew_jax import model_setup
from rew_jax import optim
from rew_jax import records
from rew_jax import sharding
from rew_jax import train as train_lib
from rew_jax.data import pipeline
from rew_jax.data import synthetic_images as si

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_records(path: str, n: int = 256) -> str:
  rng = np.random.default_rng(0)
  looks = [si.Look(s, c, p) for s in ("tower", "dome") for c in ("crimson", "cobalt")
           for p in ("plain", "striped")]
  recs = [records.RewRecord(
      image_id=f"img_{i:05d}", image=si.encode_jpeg(si.draw([looks[i % 8]], rng)),
      entity_id=f"Q{i % 8}", entity_name=" ".join(looks[i % 8]), curation_status="kept")
      for i in range(n)]
  records.write_records(path, recs, records_per_shard=128)
  return path


def bare_steps_per_s(config, steps: int) -> float:
  """The same model, optimizer and step function on one fixed batch: no data, no logging."""
  setup = model_setup.setup_model(config, rng=jax.random.key(0))
  mesh, rules, model, params = setup.mesh, setup.rules, setup.model, setup.params
  tx, schedule = optim.make(config.optim, params, config.total_steps)
  state = train_lib.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params),
                               jax.random.key(1))
  host = next(iter(pipeline.from_config(config.input)))
  batch = sharding.host_batch_to_global(
      {k: v for k, v in host.items() if np.asarray(v).dtype.kind not in "USO"}, mesh)
  jitted = jax.jit(functools.partial(train_lib.train_step, model=model, tx=tx,
                                     schedule=schedule,
                                     label_smoothing=config.loss.label_smoothing),
                   donate_argnums=(0,))
  with sharding.use(mesh, rules):
    # The compiled executable, as the loop calls it (jit's own dispatch re-checks the
    # arguments' shardings on every call; see docs/training.md).
    step = jitted.lower(state, batch).compile()
    state, m = step(state, batch)
    jax.block_until_ready(m)
    start = time.time()
    for _ in range(steps):
      state, m = step(state, batch)
    jax.block_until_ready(m)
  return steps / (time.time() - start)


def loop_steps_per_s(config, workdir: str) -> tuple[float, float]:
  """Steps/s of the train loop (its own metrics.jsonl, counted from the end of the first
  step) and its compile seconds."""
  train_lib.train(config, workdir)
  rows = metrics_lib.read(workdir)
  compile_s = next(r["seconds"] for r in rows if r["kind"] == "compile")
  return [r for r in rows if r["kind"] == "train"][-1]["steps_per_s"], compile_s


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--rounds", type=int, default=3, help="loop/bare pairs; medians")
  parser.add_argument("--config", default=os.path.join(REPO, "tests", "tiny_train_config.py"))
  args = parser.parse_args()
  steps, rounds = (40, 1) if args.quick else (args.steps, args.rounds)
  with tempfile.TemporaryDirectory() as tmp:
    # Rounds after the first load their executables from this cache instead of recompiling.
    jax.config.update("jax_compilation_cache_dir", os.path.join(tmp, "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    data_dir = make_records(os.path.join(tmp, "records"))
    config = config_lib.load_config(args.config)
    config = config.train if "train" in config else config
    config.input.data_dir = data_dir
    config.total_steps = steps + 1
    config.log_every = steps + 1  # One throughput row over all compiled steps.
    config.checkpoint.every = 10 ** 9
    # Loop and bare step alternate, so that a change in the machine's speed (other load)
    # moves both; each round gives one ratio, and the figures are medians over the rounds.
    loops, bares, compiles = [], [], []
    for r in range(rounds):
      loop, compile_s = loop_steps_per_s(config, os.path.join(tmp, f"run{r}"))
      loops.append(loop)
      compiles.append(compile_s)
      bares.append(bare_steps_per_s(config, steps))
  ratios = [a / b for a, b in zip(loops, bares)]
  ratio, loop, bare = (float(np.median(x)) for x in (ratios, loops, bares))
  print(f"loop {loop:.2f} steps/s, bare step {bare:.2f} steps/s → loop at {100 * ratio:.1f} % "
        f"of the bare step (median of {[round(100 * x, 1) for x in ratios]}; goal ≥ 95 %); "
        f"compile {compiles[0]:.1f} s; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
  print(json.dumps({"benchmark": "train_loop", "steps": steps, "rounds": rounds,
                    "ours": loop, "baseline": bare, "speedup": ratio,
                    "loop_over_bare_pct": round(100 * ratio, 1),
                    "rounds_pct": [round(100 * x, 1) for x in ratios],
                    "compile_s": compiles[0], "device": jax.devices()[0].device_kind,
                    "load_avg_1m": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
  main()
