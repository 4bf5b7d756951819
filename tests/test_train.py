"""The train loop on a tiny model: it logs, checkpoints, survives SIGKILL and SIGTERM, and
resumes bit-exactly."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from rew_jax import checkpoint as ckpt_lib
from rew_jax import config as config_lib
from rew_jax import metrics as metrics_lib
from rew_jax import records
from rew_jax import train as train_lib
from rew_jax.data import synthetic_images as si

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CONFIG = os.path.join(HERE, "tiny_train_config.py")
NAMES = ["Crimson Plain Tower", "Cobalt Striped Dome", "Amber Spotted Lotus",
         "Jade Checkered Kestrel"]


@pytest.fixture(scope="module")
def record_dir(tmp_path_factory):
  rng = np.random.default_rng(0)
  looks = [si.Look("tower", "crimson", "plain"), si.Look("dome", "cobalt", "striped"),
           si.Look("lotus", "amber", "spotted"), si.Look("kestrel", "jade", "checkered")]
  recs = []
  for i in range(48):
    k = i % 4
    recs.append(records.RewRecord(
        image_id=f"img_{i:04d}", image=si.encode_jpeg(si.draw([looks[k]], rng, min_size=32,
                                                                max_size=40)),
        entity_id=f"Q{k}", entity_name=NAMES[k], curation_status="kept", backend="test"))
  path = str(tmp_path_factory.mktemp("records"))
  records.write_records(path, recs, records_per_shard=16)
  return path


def _arg(record_dir, steps, every):
  return f"{CONFIG}:data_dir={record_dir},steps={steps},every={every}"


def _cli(record_dir, workdir, steps, every):
  return subprocess.Popen(
      [sys.executable, "-m", "rew_jax", "train", "--config", _arg(record_dir, steps, every),
       "--workdir", workdir], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True)


def _last_losses(workdir):
  """step → loss, the last logged value per step (a killed run re-logs resumed steps)."""
  return {r["step"]: r["loss"] for r in metrics_lib.read(workdir) if r["kind"] == "train"}


def _final_params(workdir, step):
  restored = ocp.StandardCheckpointer().restore(
      os.path.join(workdir, "checkpoints", str(step), "state"))
  return restored["params"]


def test_sigkill_then_resume_is_bit_exact(record_dir, tmp_path):
  steps, every = 60, 10
  straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
  out = train_lib.train(config_lib.load_config(_arg(record_dir, steps, every)), straight)

  proc = _cli(record_dir, killed, steps, every)
  deadline = time.time() + 300
  while not os.path.isdir(os.path.join(killed, "checkpoints", "10")):
    assert proc.poll() is None, proc.stdout.read()
    assert time.time() < deadline, "no checkpoint appeared"
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
  assert ckpt_lib.Manager(killed).latest_step() < steps

  proc = _cli(record_dir, killed, steps, every)
  log = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, log
  assert "resumed from step" in log

  assert _last_losses(killed) == _last_losses(straight)
  assert sorted(_last_losses(straight)) == list(range(1, steps + 1))
  for a, b in zip(jax.tree.leaves(_final_params(straight, steps)),
                  jax.tree.leaves(_final_params(killed, steps))):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(out["state"].params),
                  jax.tree.leaves(_final_params(straight, steps))):
    np.testing.assert_array_equal(np.asarray(a), b)

  rows = metrics_lib.read(straight)
  assert rows[0]["kind"] == "compile" and rows[0]["step_flops"] > 0
  train_rows = [r for r in rows if r["kind"] == "train"]
  assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in train_rows)
  assert "loss/entity" in train_rows[-1] and "steps_per_s" in train_rows[-1]
  assert train_rows[-1]["lr"] < train_rows[1]["lr"]  # Cosine decay after warmup.
  assert np.mean([r["loss"] for r in train_rows[-10:]]) < np.mean(
      [r["loss"] for r in train_rows[:10]])  # It learns the four names.
  assert os.listdir(os.path.join(straight, "tensorboard"))
  with open(os.path.join(straight, "checkpoints", str(steps), "config", "metadata")) as f:
    assert json.load(f)["total_steps"] == steps


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(record_dir, tmp_path):
  workdir = str(tmp_path / "preempted")
  proc = _cli(record_dir, workdir, 100_000, 100_000)
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 300
  while not (os.path.exists(metrics) and '"kind": "train"' in open(metrics).read()):
    assert proc.poll() is None, proc.stdout.read()
    assert time.time() < deadline
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  log = proc.communicate(timeout=120)[0]
  assert proc.returncode == 0, log
  assert "SIGTERM: saving step" in log
  step = ckpt_lib.Manager(workdir).latest_step()
  assert step is not None and 1 <= step < 100_000
