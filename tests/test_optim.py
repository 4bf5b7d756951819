"""The optimizer: schedules, per-module multipliers, frozen groups, no decay on biases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rew_jax import optim
from rew_jax.errors import ConfigError


def _config(**kw):
  c = optim.default_config()
  c.update(kw)
  return c


def test_warmup_then_cosine_values():
  sched = optim.schedule(_config(lr=1.0, warmup_steps=10, end_lr_factor=0.0), 110)
  assert float(sched(0)) == 0.0
  assert float(sched(5)) == pytest.approx(0.5)
  assert float(sched(10)) == pytest.approx(1.0)
  assert float(sched(60)) == pytest.approx(0.5, abs=1e-6)  # Half-way through the cosine.
  assert float(sched(110)) == pytest.approx(0.0, abs=1e-6)
  with pytest.raises(ConfigError, match="schedule"):
    optim.schedule(_config(schedule="exp"), 10)


def test_schedule_steps_sets_where_the_decay_ends():
  # GER-ALD's fine-tuning: warmup 250, cosine reaching 0 at 30k, run stopped at 8.5k.
  config = _config(lr=1.0, warmup_steps=250, schedule_steps=30_000)
  sched = optim.schedule(config, 8_500)
  assert float(sched(125)) == pytest.approx(0.5)
  assert float(sched(250)) == pytest.approx(1.0)
  assert float(sched(15_125)) == pytest.approx(0.5, abs=1e-6)  # Half of 30k − 250.
  assert float(sched(8_500)) == pytest.approx(0.5 * (1 + np.cos(np.pi * 8_250 / 29_750)))
  assert float(sched(30_000)) == pytest.approx(0.0, abs=1e-6)
  # 0: the decay ends at the run's last step.
  assert float(optim.schedule(_config(lr=1.0, warmup_steps=250), 8_500)(8_500)) == (
      pytest.approx(0.0, abs=1e-6))


def _params():
  return {"encoder": {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}},
          "decoder": {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}}}


def test_labels_follow_first_matching_rule():
  groups = optim.labels(_params(), _config(lr_mults=(("encoder/.*", 1.0), (".*", 10.0)),
                                           frozen=("encoder/dense/bias",)))
  assert groups["encoder"]["dense"]["kernel"] == "lr×1"
  assert groups["encoder"]["dense"]["bias"] == "frozen"
  assert groups["decoder"]["dense"]["kernel"] == "lr×10"


def test_multipliers_frozen_and_decay_mask_on_a_toy_problem():
  params = _params()
  config = _config(lr=0.1, warmup_steps=0, schedule="constant", weight_decay=0.5,
                   grad_clip_norm=0.0, lr_mults=(("encoder/.*", 1.0), (".*", 10.0)),
                   frozen=("encoder/dense/bias",))
  tx, _ = optim.make(config, params, total_steps=10)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # Adam's first step moves by lr·sign(g) (eps aside); weight decay adds lr·wd·p on matrices.
  np.testing.assert_allclose(updates["encoder"]["dense"]["kernel"], -0.1 * (1 + 0.5), rtol=1e-5)
  np.testing.assert_allclose(updates["decoder"]["dense"]["kernel"], -1.0 * (1 + 0.5), rtol=1e-5)
  np.testing.assert_allclose(updates["decoder"]["dense"]["bias"], -1.0, rtol=1e-5)  # No decay.
  np.testing.assert_array_equal(updates["encoder"]["dense"]["bias"], 0.0)  # Frozen.


def test_frozen_gradients_do_not_count_in_the_clipping_norm():
  params = _params()
  # b1 = b2 = 0 and eps = 1 make Adam's update -g / (|g| + 1): it reveals g's clipped size.
  config = _config(lr=1.0, warmup_steps=0, schedule="constant", grad_clip_norm=1.0,
                   b1=0.0, b2=0.0, eps=1.0, lr_mults=((".*", 1.0),), frozen=("encoder/.*",))
  tx, _ = optim.make(config, params, total_steps=10)
  grads = jax.tree.map(jnp.ones_like, params)
  grads["encoder"]["dense"]["kernel"] = jnp.full((2, 2), 1e6)  # Would dominate the norm.
  updates, _ = tx.update(grads, tx.init(params), params)
  g = 1 / np.sqrt(6.0)  # The decoder's 6 unit gradients clipped to norm 1.
  np.testing.assert_allclose(updates["decoder"]["dense"]["kernel"], -g / (g + 1), rtol=1e-4)
  np.testing.assert_array_equal(updates["encoder"]["dense"]["kernel"], 0.0)


def test_no_clipping_by_default():
  assert optim.default_config().grad_clip_norm == 0.0
  params = {"w": jnp.ones((2, 2))}
  # b1 = b2 = 0 and eps = 1: the update -g / (|g| + 1) shows the gradient's size.
  config = _config(lr=1.0, warmup_steps=0, schedule="constant", b1=0.0, b2=0.0, eps=1.0,
                   lr_mults=((".*", 1.0),))
  grads = {"w": jnp.full((2, 2), 3.0)}
  for clip, g in ((0.0, 3.0), (1.0, 0.5)):  # Clipped: four entries of 0.5 have norm 1.
    config.grad_clip_norm = clip
    tx, _ = optim.make(config, params, total_steps=10)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -g / (g + 1), rtol=1e-5)


def test_gradient_accumulation_applies_every_k_steps():
  params = {"w": jnp.ones((2, 2))}
  tx, _ = optim.make(_config(lr=0.1, warmup_steps=0, schedule="constant", accum_steps=2,
                             lr_mults=((".*", 1.0),)), params, total_steps=10)
  state = tx.init(params)
  u1, state = tx.update({"w": jnp.ones((2, 2))}, state, params)
  u2, state = tx.update({"w": jnp.ones((2, 2))}, state, params)
  np.testing.assert_array_equal(u1["w"], 0.0)
  assert float(jnp.abs(u2["w"]).max()) > 0
