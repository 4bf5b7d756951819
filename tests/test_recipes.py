"""Every recipe config runs 3 steps in its shrunk (runlocal) form on a (data, fsdp, tensor)
mesh of 8 fake devices; early stopping and the demo's end-to-end smoke run."""

import os

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from rew_jax import config as config_lib
from rew_jax import metrics as metrics_lib
from rew_jax import optim
from rew_jax import records
from rew_jax import train as train_lib
from rew_jax.data import code_table
from rew_jax.data import synthetic_images as si

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def record_dir(tmp_path_factory):
  rng = np.random.default_rng(0)
  recs = [records.RewRecord(
      image_id=f"img_{i:03d}",
      image=si.encode_jpeg(si.draw([si.Look("tower", "crimson", "plain")], rng, min_size=32,
                                   max_size=40)),
      caption="a crimson tower", entity_id="Q1", entity_name="Crimson Plain Tower",
      curation_status="kept", backend="test",
      rationale="it is a tall narrow crimson block with a flat top and no windows",
      qa=[{"question": "what colour is it?", "answer": "crimson"}]) for i in range(24)]
  path = str(tmp_path_factory.mktemp("records"))
  records.write_records(path, recs, records_per_shard=12)
  return path


@pytest.fixture(scope="module")
def kb_dir(tmp_path_factory):
  """A KB index directory holding only the ALD codes file (entity Q1's code)."""
  path = str(tmp_path_factory.mktemp("kb"))
  code_table.save_codes(os.path.join(path, code_table.FILE_NAME), ["Q0", "Q1"],
                        np.array([[2000, 102, 0], [3000, 102, 0]], np.int32), length=3, seed=0)
  return path


@pytest.mark.parametrize("spec", [
    "git_large_rew.py:runlocal,kb_dir={kb}",
    "git_large_rew.py:runlocal,target=name",
    "git_large_rew.py:runlocal,data=captions",
    "oven_finetune.py:runlocal,kb_dir={kb}",
])
def test_recipe_runs_three_steps_on_a_3d_mesh(spec, record_dir, kb_dir, tmp_path):
  config = config_lib.load_config(os.path.join(REPO, "configs", spec.format(kb=kb_dir))).train
  config.input.data_dir = record_dir
  # Training only: evaluation needs OVEN files and a KB (tests/test_docstring_commands.py
  # runs oven_finetune's commands with them).
  config.evals = config_lib.ConfigDict()
  assert dict(config.mesh) == dict(data=2, fsdp=2, tensor=2)
  out = train_lib.train(config, str(tmp_path))
  assert int(out["state"].step) == 3
  assert np.isfinite(out["metrics"]["loss"])
  loss_key = "loss/caption" if "captions" in spec else "loss/entity"
  assert loss_key in out["metrics"]
  # The rationale (14 tokens + EOS) does not fit runlocal's 8: cut, and counted per task.
  rows = [r for r in metrics_lib.read(str(tmp_path)) if r["kind"] == "train"]
  if spec.startswith("git_large_rew.py") and "captions" not in spec:
    assert sum(r.get("truncated/rationale", 0) for r in rows) >= 1
  assert sum(r["truncated"] for r in rows) == sum(r.get(f"truncated/{t}", 0) for r in rows
                                                  for t in ("entity", "rationale", "qa",
                                                            "caption"))
  assert not any(r.get("truncated/entity") for r in rows)
  # Adam's moments live where their parameters live: compare each moment of the output
  # layer (and of every other weight) with its parameter, by key path.
  params = {jax.tree_util.keystr(p): x for p, x in
            jax.tree_util.tree_flatten_with_path(out["state"].params)[0]}
  checked = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(out["state"].opt_state)[0]:
    key = jax.tree_util.keystr(path)
    owner = [p for p in params if key.endswith(p)]
    if owner and leaf.shape == params[owner[0]].shape:
      assert leaf.sharding.spec == params[owner[0]].sharding.spec, key
      checked += 1
  assert checked >= 2 * len(params)  # mu and nu of every parameter.
  assert params["['head']['kernel']"].sharding.spec == PartitionSpec("fsdp", "tensor")


def test_full_recipes_describe_the_paper():
  c = config_lib.load_config(os.path.join(REPO, "configs", "git_large_rew.py")).train
  assert (c.input.batch_size, c.total_steps, c.optim.lr, c.optim.warmup_steps) == (
      4096, 600_000, 1e-5, 250)
  assert tuple(map(tuple, c.optim.lr_mults)) == (("encoder/.*", 1.0), (".*", 10.0))
  assert c.model.variant == "L/14" and c.model.image_size == 224
  assert c.loss.label_smoothing == 0.3
  with pytest.raises(config_lib.ConfigError, match="data="):
    config_lib.load_config(os.path.join(REPO, "configs", "git_large_rew.py:data=laion"))
  assert c.optim.grad_clip_norm == 0.0  # GER-ALD clips in neither stage.


def test_finetune_recipe_is_gerald_finetuning_config():
  """scenic/projects/gerald/configs/gerald_finetuning_config.py, value by value."""
  f = config_lib.load_config(os.path.join(REPO, "configs", "oven_finetune.py")).train
  assert f.input.batch_size == 256
  assert f.optim.lr == 3e-7
  assert f.loss.label_smoothing == 0.1
  assert tuple(map(tuple, f.optim.lr_mults)) == ((".*", 1.0),)  # No decoder multiplier.
  assert (f.optim.warmup_steps, f.optim.schedule, f.optim.schedule_steps) == (250, "cosine",
                                                                               30_000)
  assert f.total_steps == 8_500
  assert f.optim.grad_clip_norm == 0.0 and f.optim.weight_decay == 0.0
  assert (f.evals.oven_val.every, f.checkpoint.every) == (500, 500)
  # The learning rate the run sees: 3e-7 after warmup, then scenic's cosine over 30k.
  sched = optim.schedule(train_lib.with_defaults(f).optim, f.total_steps)
  assert float(sched(250)) == pytest.approx(3e-7)
  assert float(sched(8_500)) == pytest.approx(
      3e-7 * 0.5 * (1 + np.cos(np.pi * (8_500 - 250) / (30_000 - 250))), rel=1e-5)
  # The best validation step is kept; stopping on it is opt-in.
  assert (f.early_stopping.metric, f.early_stopping.patience) == ("oven_val/final_score", 0)
  opt_in = config_lib.load_config(
      os.path.join(REPO, "configs", "oven_finetune.py:early_stop=4")).train
  assert opt_in.early_stopping.patience == 4


def test_early_stopping_counts_evaluations_without_improvement():
  early = train_lib._EarlyStopping(dict(metric="m", patience=2))
  assert [early.update(s, {"m": v}) for s, v in
          [(1, 1.0), (2, 2.0), (3, 1.5), (4, 2.0), (5, 0.1)]] == [False, False, False, True, True]
  assert (early.best, early.best_step) == (2.0, 2)
  never = train_lib._EarlyStopping(dict(metric="m", patience=0))
  assert not any(never.update(s, {"m": 0.0}) for s in range(10))
