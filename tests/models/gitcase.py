"""Tiny GiT configs and inputs shared by the model tests."""

import jax
import jax.numpy as jnp
import numpy as np


def tiny_config(**overrides):
  """A GiT small enough to compile in about a second on CPU."""
  config = dict(
      variant="mu/8", image_size=32,
      vit=dict(width=32, depth=1, num_heads=2, mlp_dim=64),
      decoder=dict(num_layers=2, hidden_size=32, num_heads=4, mlp_dim=64, dropout=0.0),
      vocab_size=128, max_prompt_len=5, max_target_len=6)
  for key, value in overrides.items():
    if isinstance(value, dict):
      config[key] = dict(config.get(key, {}), **value)
    else:
      config[key] = value
  return config


def tiny_inputs(batch=3, seed=1):
  """Images, prompts of different lengths (right-padded), targets with trailing padding."""
  images = jax.random.normal(jax.random.key(seed), (batch, 32, 32, 3))
  prompts = np.zeros((batch, 5), np.int32)
  targets = np.zeros((batch, 6), np.int32)
  rng = np.random.default_rng(seed)
  for b in range(batch):
    plen, tlen = [3, 0, 5, 1][b % 4], [6, 4, 5, 2][b % 4]
    prompts[b, :plen] = rng.integers(3, 100, plen)
    targets[b, 0] = 101
    targets[b, 1:tlen] = rng.integers(3, 100, tlen - 1)
  return images, jnp.asarray(prompts), jnp.asarray(targets)




def random_params(model, *inputs, seed=0):
  """Random weights of the model's shapes, drawn in numpy.

  Much cheaper than compiling `model.init` (its many RNG ops take seconds to compile on CPU);
  layer-norm scales stay near one so that signals survive.
  """
  import flax.linen as nn
  abstract = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), *inputs))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    if jax.tree_util.keystr(path).endswith("['scale']"):
      return jnp.asarray(1.0 + 0.1 * noise)
    return jnp.asarray(0.05 * noise)

  return jax.tree_util.tree_map_with_path(fill, abstract)
