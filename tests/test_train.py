"""The train loop on a tiny model: it logs, checkpoints, survives SIGKILL and SIGTERM, and
resumes bit-exactly; it trains any registered model; its config keys and defaults."""

import json
import os
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from rew_jax import checkpoint as ckpt_lib
from rew_jax import config as config_lib
from rew_jax import metrics as metrics_lib
from rew_jax import records
from rew_jax import registry
from rew_jax import runs
from rew_jax import train as train_lib
from rew_jax.data import synthetic_images as si
from rew_jax.data import tasks
from rew_jax.errors import UserError
from rew_jax.evaluators import checkpoint_eval
from rew_jax.evaluators import common as eval_common
from rew_jax.models import base

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


def _config(record_dir, steps, every):
  return config_lib.load_config(_arg(record_dir, steps, every)).train


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
  out = train_lib.train(_config(record_dir, steps, every), straight)

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


@pytest.mark.slow
def test_the_cli_trains_with_grain_worker_processes(record_dir, tmp_path):
  # Grain reads an absl flag when it starts workers; `python -m rew_jax` parses the flags.
  workdir = str(tmp_path / "workers")
  proc = subprocess.run(
      [sys.executable, "-m", "rew_jax", "train", "--config", _arg(record_dir, 2, 100),
       "--workdir", workdir, "--config.train.input.num_workers=2"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert sorted(_last_losses(workdir)) == [1, 2]
  assert ckpt_lib.Manager(workdir).latest_step() == 2


# ------------------------------------------------------------------------------------------
# Any registered model: the loop knows only the interface of rew_jax/models/base.py.


class _PooledLinear(nn.Module):
  """Logits [B,V] of 4×4-patch-mean image features: one Dense layer."""
  vocab_size: int

  @nn.compact
  def __call__(self, images):
    b, h, w, c = images.shape
    x = images.reshape(b, 4, h // 4, 4, w // 4, c).mean(axis=(2, 4)).reshape(b, -1)
    return nn.Dense(self.vocab_size, kernel_init=nn.with_logical_partitioning(
        nn.initializers.zeros, ("embed", "vocab")))(x)


class LinearModel(base.Model):
  """Predicts the first target token from the image: not a GiT, no text decoder."""

  def __init__(self, config):
    super().__init__(config)
    self.module = _PooledLinear(config.vocab_size)

  def dummy_inputs(self, batch=1):
    return (jnp.zeros((batch, 32, 32, 3), jnp.float32),)

  def logits_and_targets(self, params, batch, *, rng, train):
    del rng, train  # No dropout.
    logits = self.module.apply({"params": params}, batch["image"])
    target = batch["target"][:, :1]
    return logits[:, None], target, jnp.ones(target.shape, jnp.float32)

  def predict_fns(self, predict_config=None):
    del predict_config
    return {"logits": jax.jit(lambda params, batch: {
        "logits": self.module.apply({"params": params}, batch["image"])})}


class MeanLogitEvaluator(eval_common.Evaluator):
  """The mean |logit| on a fixed batch: a number that changes with the parameters."""

  def __init__(self, predict_fn, *, name, workdir=None):
    self.predict_fn, self.name, self.workdir = predict_fn, name, workdir

  def run(self, params, *, step=None):
    images = np.linspace(-1, 1, 2 * 32 * 32 * 3, dtype=np.float32).reshape(2, 32, 32, 3)
    logits = self.predict_fn(params, {"image": images})["logits"]
    yield f"{self.name}/mean_abs_logit", float(np.abs(np.asarray(logits)).mean())


@pytest.fixture
def test_components(monkeypatch):
  """LinearModel and MeanLogitEvaluator, registered for one test only: other tests check
  the registries' exact names."""
  # pylint: disable=protected-access
  monkeypatch.setitem(registry.MODELS._items, "test_linear", LinearModel)
  monkeypatch.setitem(registry.EVALUATORS._items, "test_mean_logit", MeanLogitEvaluator)


@pytest.mark.usefixtures("test_components")
def test_the_loop_trains_and_evaluates_any_registered_model(record_dir, tmp_path):
  config = _config(record_dir, 2, 2)
  config.model = config_lib.ConfigDict(dict(name="test_linear", vocab_size=30522))
  config.loss.label_smoothing = 0.0
  config.evals = config_lib.ConfigDict(dict(
      probe=dict(type="test_mean_logit", pred="logits", every=2)))
  out = train_lib.train(config, str(tmp_path))
  assert isinstance(out["model"], LinearModel) and int(out["state"].step) == 2
  params = out["state"].params
  assert jax.tree.map(np.shape, params) == {"Dense_0": {"kernel": (48, 30522),
                                                        "bias": (30522,)}}
  assert np.abs(np.asarray(params["Dense_0"]["bias"])).max() > 0  # It was updated.
  rows = [r for r in metrics_lib.read(str(tmp_path)) if r["kind"] == "train"]
  # Zero weights predict uniformly: the first loss is log V.
  assert rows[0]["loss"] == pytest.approx(np.log(30522), rel=1e-4)
  assert "loss/entity" in rows[-1] and np.isfinite(rows[-1]["loss"])
  assert ckpt_lib.Manager(str(tmp_path)).latest_step() == 2

  # Checkpoint evaluation builds the same model and evaluators and reads the parameters.
  in_loop = out["metrics"]["probe/mean_abs_logit"]
  assert in_loop > 0
  again = checkpoint_eval.evaluate(config, str(tmp_path))
  assert again == {"probe/mean_abs_logit": pytest.approx(in_loop, rel=1e-6)}
  assert checkpoint_eval.evaluate(config, str(tmp_path), step=2) == again


# ------------------------------------------------------------------------------------------
# The train config: every key the recipes set has a default; unknown keys fail.


@pytest.mark.parametrize("spec", ["configs/demo.py", "configs/git_large_rew.py",
                                  "configs/oven_finetune.py", "tests/tiny_train_config.py"])
def test_default_config_knows_every_key_the_recipes_set(spec):
  section = config_lib.load_config(os.path.join(REPO, spec)).train
  filled = train_lib.with_defaults(section)
  assert set(filled.keys()) == set(train_lib.default_config().keys())
  # Every value the recipe set is kept, at any depth; the rest comes from the schemas.
  leaves = lambda c: {k: c[k] for k in config_lib.flat_keys(c)
                      if not isinstance(c[k], config_lib.ConfigDict)}
  given, got = leaves(section), leaves(filled)
  assert {k: got[k] for k in given} == given
  model = registry.MODELS.get(section.model.name)
  assert set(filled.model.keys()) == set(model.default_config().keys())
  assert set(filled.predict.keys()) == set(model.predict_config().keys())
  assert set(filled.input.tasks.weights.keys()) == set(tasks.names())


def test_unknown_train_keys_fail_with_the_closest_name():
  with pytest.raises(config_lib.ConfigError, match="train.total_step;.*total_steps"):
    train_lib.with_defaults(config_lib.ConfigDict(dict(total_step=3)))
  with pytest.raises(config_lib.ConfigError, match="train.checkpoint.evry"):
    train_lib.with_defaults(config_lib.ConfigDict(dict(checkpoint=dict(evry=3))))
  filled = train_lib.with_defaults(config_lib.ConfigDict(dict(
      checkpoint=dict(every=5), mesh=dict(fsdp=-1))))
  assert dict(filled.checkpoint) == dict(every=5, keep=3, async_save=True)
  assert dict(filled.mesh) == dict(fsdp=-1)  # Open, taken whole: absent axes have size 1.
  with pytest.raises(config_lib.ConfigError, match="train.model.decoder.hidden; closest valid "
                                                   "keys: hidden_size"):
    train_lib.with_defaults(config_lib.ConfigDict(dict(model=dict(name="git",
                                                                  decoder=dict(hidden=3)))))
  with pytest.raises(config_lib.ConfigError, match="train.predict.num_beam;.*num_beams"):
    train_lib.with_defaults(config_lib.ConfigDict(dict(model=dict(name="git"),
                                                       predict=dict(num_beam=3))))


# ------------------------------------------------------------------------------------------
# Validation-based selection: the best step outlives the keep-N rotation; stopping is opt-in.

SCORES = {1: 0.1, 2: 0.9, 3: 0.2, 4: 0.3, 5: 0.4, 6: 0.5, 7: 0.6, 8: 0.7}  # Best at step 2.


class ScriptedEvaluator:
  """Yields SCORES[step] as `probe/score`: a validation curve fixed in advance."""

  def run(self, params, *, step=None):
    del params
    yield "probe/score", SCORES[step]


def _selection_run(record_dir, workdir, **early_stopping):
  config = _config(record_dir, 8, 3)  # Saves at 3, 6 and 8 (the end).
  config.model = config_lib.ConfigDict(dict(name="test_linear", vocab_size=64))
  config.checkpoint.keep = 1
  config.checkpoint.async_save = False
  config.early_stopping = config_lib.ConfigDict(early_stopping)
  return train_lib.train(config, workdir,
                         evaluators_fn=lambda model, mesh: {"probe": (ScriptedEvaluator(), 1)})


@pytest.mark.usefixtures("test_components")
def test_the_best_step_survives_the_rotation_and_eval_finds_it(record_dir, tmp_path):
  wd = str(tmp_path / "tracked")
  out = _selection_run(record_dir, wd, metric="probe/score")
  assert int(out["state"].step) == 8  # patience 0: no stopping.
  assert (out["metrics"]["best_step"], out["metrics"]["best_probe/score"]) == (2, 0.9)
  manager = ckpt_lib.Manager(wd, keep=1, best_metric="probe/score")
  # Step 2 was no save step: it was saved as a new best, and keep=1 did not delete it.
  assert manager.all_steps() == [2, 8]
  assert manager.best() == (2, 0.9)
  manager.close()
  assert ckpt_lib.best_step(wd, "probe/score") == 2
  config = train_lib.with_defaults(config_lib.ConfigDict(dict(
      early_stopping=dict(metric="probe/score"))))
  assert runs.resolve_step(wd, "best", config) == 2
  assert runs.resolve_step(wd, "best") == 2  # early_stopping.metric from the saved config.
  assert runs.resolve_step(wd, "6", config) == runs.resolve_step(wd, 6) == 6
  assert runs.resolve_step(wd, None, config) == 8
  # The best step's parameters are the ones trained for 2 steps, not the last ones.
  best = ckpt_lib.load_params(os.path.join(wd, "checkpoints", "2"))
  last = ckpt_lib.load_params(os.path.join(wd, "checkpoints", "8"))
  assert not np.allclose(best["Dense_0"]["kernel"], last["Dense_0"]["kernel"])

  # Without a metric, keep=1 keeps only the newest step, and `--step best` says why not.
  plain = str(tmp_path / "plain")
  _selection_run(record_dir, plain)
  assert ckpt_lib.Manager(plain).all_steps() == [8]
  with pytest.raises(UserError, match="no checkpoint was saved with the metric"):
    ckpt_lib.best_step(plain, "probe/score")
  with pytest.raises(config_lib.ConfigError, match="early_stopping.metric"):
    runs.resolve_step(plain, "best", train_lib.with_defaults(config_lib.ConfigDict()))


@pytest.mark.usefixtures("test_components")
def test_early_stopping_is_opt_in(record_dir, tmp_path):
  wd = str(tmp_path)
  out = _selection_run(record_dir, wd, metric="probe/score", patience=2)
  # Steps 3 and 4 do not beat step 2: two evaluations without improvement stop at 4.
  assert int(out["state"].step) == 4 and out["metrics"]["best_step"] == 2
  assert ckpt_lib.Manager(wd, best_metric="probe/score").all_steps() == [2, 4]
  # Lower is better with mode=min: step 1 stays the best, and the run stops at step 3.
  low = _selection_run(record_dir, str(tmp_path / "min"), metric="probe/score", patience=2,
                       mode="min")
  assert int(low["state"].step) == 3 and low["metrics"]["best_step"] == 1
  with pytest.raises(config_lib.ConfigError, match="needs early_stopping.metric"):
    train_lib._EarlyStopping(dict(patience=2))  # pylint: disable=protected-access


def test_optimizer_state_shardings_follow_their_parameters_structurally():
  """Adam's mu/nu, a frozen group (multi_transform + set_to_zero) and MultiSteps'
  accumulator take the parameter's sharding; counts are replicated. `a/kernel` and
  `kernel` share a suffix and a shape, which path matching could not tell apart."""
  mesh = jax.make_mesh((8,), ("fsdp",))
  NS, P = jax.sharding.NamedSharding, jax.sharding.PartitionSpec
  params = {"a": {"kernel": jax.ShapeDtypeStruct((8, 4), jnp.float32)},
            "kernel": jax.ShapeDtypeStruct((8, 4), jnp.float32),
            "frozen": jax.ShapeDtypeStruct((16,), jnp.float32)}
  shardings = {"a": {"kernel": NS(mesh, P("fsdp", None))}, "kernel": NS(mesh, P(None, None)),
               "frozen": NS(mesh, P("fsdp"))}
  tx = optax.MultiSteps(optax.multi_transform(
      {"train": optax.adam(1e-3), "freeze": optax.set_to_zero()},
      {"a": {"kernel": "train"}, "kernel": "train", "frozen": "freeze"}), every_k_schedule=2)
  out = train_lib.state_shardings(tx, params, shardings, mesh)
  flat = jax.tree_util.tree_flatten_with_path(out.opt_state)[0]
  by_path = {jax.tree_util.keystr(p): s for p, s in flat}
  mus = {k: s for k, s in by_path.items() if ".mu" in k}
  assert {k.split(".mu")[1]: s.spec for k, s in mus.items()} == {
      "['a']['kernel']": P("fsdp", None), "['kernel']": P(None, None)}
  acc = {k: s.spec for k, s in by_path.items() if "acc_grads" in k}
  assert acc == {".acc_grads['a']['kernel']": P("fsdp", None),
                 ".acc_grads['frozen']": P("fsdp"), ".acc_grads['kernel']": P(None, None)}
  counts = [s for k, s in by_path.items() if "count" in k or "mini_step" in k]
  assert counts and all(s.spec == P() for s in counts)
