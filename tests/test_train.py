"""The train loop on a tiny model: it learns, logs, checkpoints and resumes exactly."""

import json
import os

import jax
import numpy as np
import pytest

from rew_jax import checkpoint as ckpt_lib
from rew_jax import config as config_lib
from rew_jax import metrics as metrics_lib
from rew_jax import optim
from rew_jax import records
from rew_jax import train as train_lib
from rew_jax.data import pipeline
from rew_jax.data import synthetic_images as si

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


def _config(data_dir, total_steps):
  c = config_lib.ConfigDict()
  c.seed = 0
  c.total_steps = total_steps
  c.log_every = 1
  c.model = config_lib.ConfigDict(dict(
      name="git", variant="mu/8", image_size=32,
      vit=dict(width=32, depth=1, num_heads=2, mlp_dim=64),
      decoder=dict(num_layers=1, hidden_size=32, num_heads=2, mlp_dim=64, dropout=0.1),
      max_prompt_len=8, max_target_len=8))
  c.input = pipeline.default_config()
  c.input.data_dir = data_dir
  c.input.batch_size = 8
  c.input.num_threads = 1
  c.input.pp = ("decode|inception_crop(32, area_min=50)|normalize('clip')|"
                "tokenize(key='prompt', bos=True)|pad(8, key='prompt')|"
                "tokenize(key='target', eos=True)|pad(8, key='target', keep_eos=102)")
  c.optim = optim.default_config()
  c.optim.update(dict(lr=3e-3, warmup_steps=1, lr_mults=((".*", 1.0),)))
  c.loss = config_lib.ConfigDict(dict(label_smoothing=0.1))
  c.mesh = config_lib.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.sharding_rules = None
  c.checkpoint = config_lib.ConfigDict(dict(every=2, keep=2, async_save=True))
  return c


def _losses(workdir):
  return [r["loss"] for r in metrics_lib.read(workdir) if r["kind"] == "train"]


def test_resume_is_exact_and_metrics_are_logged(record_dir, tmp_path):
  straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
  out = train_lib.train(_config(record_dir, 4), straight)
  train_lib.train(_config(record_dir, 2), split)
  assert ckpt_lib.Manager(split).latest_step() == 2
  resumed = train_lib.train(_config(record_dir, 4), split)

  assert _losses(straight) == _losses(split)  # Same batches, same dropout, same updates.
  for a, b in zip(jax.tree.leaves(out["state"].params), jax.tree.leaves(resumed["state"].params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  rows = metrics_lib.read(straight)
  compile_row = rows[0]
  assert compile_row["kind"] == "compile" and compile_row["step_flops"] > 0
  train_rows = [r for r in rows if r["kind"] == "train"]
  assert [r["step"] for r in train_rows] == list(range(1, 5))
  assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in train_rows)
  assert "loss/entity" in train_rows[-1] and "steps_per_s" in train_rows[-1]
  assert train_rows[-1]["lr"] < train_rows[1]["lr"]  # Cosine decay after warmup.
  assert os.listdir(os.path.join(straight, "tensorboard"))
  with open(os.path.join(straight, "checkpoints", "4", "config", "metadata")) as f:
    assert json.load(f)["total_steps"] == 4
