"""Two real JAX processes on this machine (tests/multihost.py: 4 CPU devices each, gloo
collectives, `jax.distributed.initialize`), running the same commands as a pod's hosts:
training equals one process, a SIGTERM to one host stops both at the same step, and the
rerun resumes bit-exactly. Every expensive run happens once, in a module-scoped fixture."""

import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import multihost
from rew_jax import checkpoint as ckpt_lib
from rew_jax import config as config_lib
from rew_jax import metrics as metrics_lib
from rew_jax import train as train_lib

pytestmark = pytest.mark.slow

STEPS = 10


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
  two = multihost.start(multihost.train_args(record_dir, out["two"], steps=STEPS, every=100))
  # Meanwhile, the one-process reference; the hybrid mesh is the plain one on one process.
  train_lib.train(config_lib.load_config(spec + ",mesh=hybrid").train, out["one"])
  out["two_logs"] = multihost.check(multihost.wait(two))

  procs = multihost.start(multihost.train_args(record_dir, out["preempted"], steps=STEPS,
                                               every=100))
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
      multihost.train_args(record_dir, out["preempted"], steps=STEPS, every=100))
  return out


def _losses(workdir):
  """step → loss, the last logged value per step (a resumed run re-logs no step)."""
  return {r["step"]: r["loss"] for r in metrics_lib.read(workdir) if r["kind"] == "train"}


def _params(workdir, step):
  return ocp.StandardCheckpointer().restore(
      os.path.join(workdir, "checkpoints", str(step), "state"))["params"]


def test_two_processes_train_like_one(runs):
  one, two = _losses(runs["one"]), _losses(runs["two"])
  assert sorted(one) == sorted(two) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([two[s] for s in sorted(two)], [one[s] for s in sorted(one)],
                             rtol=2e-5)
  for a, b in zip(jax.tree.leaves(_params(runs["one"], STEPS)),
                  jax.tree.leaves(_params(runs["two"], STEPS))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
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
  for a, b in zip(jax.tree.leaves(_params(runs["two"], STEPS)),
                  jax.tree.leaves(_params(runs["preempted"], STEPS))):
    np.testing.assert_array_equal(a, b)
