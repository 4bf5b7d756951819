"""Two real JAX processes on this machine (tests/multihost.py: 4 CPU devices each, gloo
collectives, `jax.distributed.initialize`), running the same commands as a pod's hosts:
training equals one process, a SIGTERM to one host stops both at the same step, and the
rerun resumes bit-exactly; `candidates` writes what one process writes; `eval` predicts and
scores what one process does, and only process 0 writes. Every expensive run happens once,
in a module-scoped fixture."""

import json
import os
import shutil
import signal
import time

import jax
import numpy as np
import pytest

import multihost
from rew_jax import checkpoint as ckpt_lib
from rew_jax import __main__ as cli
from rew_jax import config as config_lib
from rew_jax import metrics as metrics_lib
from rew_jax import train as train_lib
from rew_jax.evaluators import checkpoint_eval

pytestmark = pytest.mark.slow

STEPS = 10


def printed(stdout: str) -> str:
  """What a process printed, less the CPU collectives' own connection line ("N peer ranks.
  Expected number of connected peer ranks is : N"), which their C++ code writes to the
  process's stdout when peers are slow to connect."""
  return "\n".join(line for line in stdout.splitlines()
                   if "Expected number of connected peer ranks" not in line)


@pytest.fixture(scope="module")
def record_dir(tmp_path_factory):
  return multihost.tiny_records(str(tmp_path_factory.mktemp("records")))


@pytest.fixture(scope="module")
def runs(record_dir, tmp_path_factory):
  """One process (in this one, 8 devices) and two (4 + 4) train the same tiny config; a
  third run of two is sent SIGTERM on one process only, then rerun to the end."""
  root = tmp_path_factory.mktemp("multihost_train")
  out = {name: str(root / name) for name in ("one", "two", "preempted")}
  spec = f"{multihost.TINY_TRAIN_CONFIG}:data_dir={record_dir},steps={STEPS},every=100"
  # Fast-compile builds: the three two-process runs compare bit-exactly with each other and
  # within a tolerance with the one-process run.
  two = multihost.start(multihost.train_args(record_dir, out["two"], steps=STEPS, every=100),
                        fast_compile=True)
  # Meanwhile, the one-process reference; the hybrid mesh is the plain one on one process.
  state = train_lib.train(config_lib.load_config(spec + ",mesh=hybrid").train, out["one"])
  out["abstract_params"] = ckpt_lib.abstract_with_shardings(
      state["state"].params, jax.tree.map(lambda x: x.sharding, state["state"].params))
  out["two_logs"] = multihost.check(multihost.wait(two))

  procs = multihost.start(multihost.train_args(record_dir, out["preempted"], steps=STEPS,
                                               every=100), fast_compile=True)
  metrics = os.path.join(out["preempted"], "metrics.jsonl")
  deadline = time.time() + 300
  while not (os.path.exists(metrics) and '"kind": "train"' in open(metrics).read()):
    assert all(p.poll() is None for p in procs), multihost.wait(procs)
    assert time.time() < deadline, "no training step was logged"
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)  # One host only: process 1, which writes no metrics.
  out["preempted_logs"] = multihost.check(multihost.wait(procs))
  out["preempted_step"] = ckpt_lib.latest_step(out["preempted"])
  out["resumed_logs"] = multihost.run(
      multihost.train_args(record_dir, out["preempted"], steps=STEPS, every=100),
      fast_compile=True)
  return out


def _losses(workdir):
  """step → loss, the last logged value per step (a resumed run re-logs no step)."""
  return {r["step"]: r["loss"] for r in metrics_lib.read(workdir) if r["kind"] == "train"}


def _params(runs, name):
  """The final parameters of a run, read onto this process's 8 devices."""
  step_dir = os.path.join(runs[name], "checkpoints", str(STEPS))
  return jax.device_get(ckpt_lib.load_params(step_dir, runs["abstract_params"]))


def test_two_processes_train_like_one(runs):
  one, two = _losses(runs["one"]), _losses(runs["two"])
  assert sorted(one) == sorted(two) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([two[s] for s in sorted(two)], [one[s] for s in sorted(one)],
                             rtol=2e-5)
  # Parameters near zero (of order 1e-7) move by Adam steps of size lr·g/(|g| + eps): a
  # gradient that is rounding noise in both runs (other reduction orders on 8 devices of one
  # process and of two) still moves them by ~1e-6, in either direction.
  for a, b in zip(jax.tree.leaves(_params(runs, "one")), jax.tree.leaves(_params(runs, "two"))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-6)
  # Process 0 alone logs: its stderr carries the progress bar, process 1's does not.
  logs = runs["two_logs"]
  assert "train:" in logs[0].stderr and "train:" not in logs[1].stderr


def test_sigterm_to_one_process_stops_both_at_the_same_step(runs):
  step = runs["preempted_step"]
  assert step is not None and 1 <= step < STEPS, "the run ended before the SIGTERM"
  for result in runs["preempted_logs"]:
    assert f"SIGTERM: saving step {step} and exiting" in result.stderr
    assert "preempted at step" in result.stderr


def test_the_rerun_resumes_bit_exactly(runs):
  assert "resumed from step" in runs["resumed_logs"][0].stderr
  assert _losses(runs["preempted"]) == _losses(runs["two"])
  for a, b in zip(jax.tree.leaves(_params(runs, "two")),
                  jax.tree.leaves(_params(runs, "preempted"))):
    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------
# candidates and eval, on a small embedded world.

WORLD = ["--config", "configs/demo.py:runlocal", "--config.world.num_entities=12",
         "--config.world.num_web_images=40", "--config.world.contact_sheet=False"] + [
    f"--config.world.oven.{split}={n}" for split, n in (
        ("entity_train", 8), ("entity_val", 12), ("entity_test", 4), ("query_train", 4),
        ("query_val", 6), ("query_test", 4))]


def _candidates_args(workdir, world):
  # Small shards and embedding shards, so that both hosts get some of each.
  return ["candidates", "--config", "configs/candidates_demo.py", "--workdir", workdir,
          f"--config.candidates.data.path={world}", "--config.candidates.data.records_per_shard=8",
          "--config.candidates.embeddings.shard_rows=4", "--config.candidates.encoder.batch_size=16"]


@pytest.fixture(scope="module")
def world_runs(tmp_path_factory):
  """A world and its candidates (and KB index) by one process, the candidates again by two."""
  root = tmp_path_factory.mktemp("multihost_world")
  one, two = str(root / "one"), str(root / "two")
  assert cli.main(["world", "--workdir", one] + WORLD) == 0
  world = os.path.join(one, "world")
  procs = multihost.start(_candidates_args(two, world))
  assert cli.main(_candidates_args(one, world)) == 0
  return {"one": one, "two": two, "logs": multihost.check(multihost.wait(procs))}


def _shards(workdir):
  out = os.path.join(workdir, "candidates")
  manifest = json.load(open(os.path.join(out, "manifest.json")))
  rows = [json.loads(line) for s in manifest["shards"] for line in open(os.path.join(out, s["path"]))]
  return manifest, rows


def test_two_processes_write_the_candidates_of_one(world_runs):
  (m1, rows1), (m2, rows2) = _shards(world_runs["one"]), _shards(world_runs["two"])
  assert m1["shards"] == m2["shards"] and m1["num_shards"] == 5 and m1["records"] == 40
  assert [r["image_id"] for r in rows1] == [r["image_id"] for r in rows2]
  for a, b in zip(rows1, rows2):
    assert [c["entity_id"] for c in a["candidates"]] == [c["entity_id"] for c in b["candidates"]]
    # Encoded on 4 devices instead of 8: the same scores up to float rounding (float32
    # through 6 MiniLM layers, batched otherwise, then written with 6 decimals: measured
    # differences reach 4e-6 on scores of ~0.3).
    np.testing.assert_allclose([c["score"] for c in a["candidates"]],
                               [c["score"] for c in b["candidates"]], atol=1e-5)
  # The entity embeddings were built once, their shards split over the hosts.
  emb = os.path.join(world_runs["two"], "kb", "embeddings-title-float16")
  assert sorted(os.listdir(emb)) == sorted(
      os.listdir(os.path.join(world_runs["one"], "kb", "embeddings-title-float16")))
  logs = world_runs["logs"]
  assert "candidates: 40 images in 5 shards" in logs[0].stdout and not printed(logs[1].stdout)


@pytest.fixture(scope="module")
def eval_runs(runs, world_runs, record_dir):
  """The one-process training run's checkpoint evaluated by one process, then by two."""
  spec = (f"{multihost.TINY_TRAIN_CONFIG}:data_dir={record_dir},steps={STEPS},every=100,"
          f"mesh=hybrid,world={world_runs['one']}")
  workdir = runs["one"]
  one = checkpoint_eval.evaluate(train_lib.with_defaults(config_lib.load_config(spec).train),
                                 workdir)
  out_dir = os.path.join(workdir, "eval")
  shutil.move(out_dir, out_dir + "_one")
  logs = multihost.run(["eval", "--config", spec, "--workdir", workdir])
  return {"one": one, "logs": logs, "one_dir": out_dir + "_one", "two_dir": out_dir}


def test_two_processes_evaluate_like_one_and_only_process_0_writes(eval_runs):
  logs = eval_runs["logs"]
  assert json.loads(printed(logs[0].stdout)) == pytest.approx(eval_runs["one"])
  assert not printed(logs[1].stdout).strip()  # Process 1 predicted its share, reports nothing.
  files = lambda d: sorted(os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d)
                           for f in fs)
  assert files(eval_runs["two_dir"]) == files(eval_runs["one_dir"]) == [
      f"oven/step_{STEPS}/{name}" for name in ("metrics.json", "predictions_entity.jsonl",
                                               "predictions_query.jsonl", "table.tsv")]
  for name in files(eval_runs["one_dir"]):  # The same entity predicted for every reference.
    one = open(os.path.join(eval_runs["one_dir"], name)).read()
    assert open(os.path.join(eval_runs["two_dir"], name)).read() == one, name
