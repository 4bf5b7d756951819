"""The optimizer from config: AdamW, warmup + cosine, per-module lr multipliers, frozen groups.

    config.optim = dict(lr=1e-5, warmup_steps=250, schedule="cosine", end_lr_factor=0.0,
                        schedule_steps=0, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                        grad_clip_norm=0.0, lr_mults=(("encoder/.*", 1.0), (".*", 10.0)),
                        frozen=(), accum_steps=1)

The decay ends at `schedule_steps` (0: at the run's total_steps); GER-ALD's fine-tuning
decays over 30k steps and stops at 8.5k. `grad_clip_norm` > 0 clips the global gradient
norm; GER-ALD clips in neither stage (scenic's gerald configs set no clip), hence 0.

Parameter paths are "/"-joined pytree keys ("encoder/blocks_0/attn/query/kernel"). The first
`lr_mults` regex that matches (re.fullmatch) a path gives its multiplier; `frozen` regexes
select parameters that never change (their updates are zero and they hold no Adam moments).
Weight decay never applies to scales and biases (arrays of rank <= 1).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax

from rew_jax.config import ConfigDict
from rew_jax.errors import ConfigError


def default_config() -> ConfigDict:
  return ConfigDict(dict(
      lr=1e-5, warmup_steps=250, schedule="cosine", end_lr_factor=0.0,
      schedule_steps=0,             # Where the decay ends; 0: the run's total_steps.
      b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
      grad_clip_norm=0.0,           # 0: no clipping (GER-ALD's), else the global-norm bound.
      # GER-ALD: the image encoder at the base rate, everything after it ×10.
      lr_mults=(("encoder/.*", 1.0), (".*", 10.0)),
      frozen=(),
      accum_steps=1,
  ))


def path_names(tree) -> Any:
  """A tree of the same structure whose leaves are the "/"-joined key paths."""
  def name(path, _):
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
  return jax.tree_util.tree_map_with_path(name, tree)


def schedule(config, total_steps: int) -> optax.Schedule:
  """Linear warmup to `lr`, then cosine (or constant/linear) decay to lr × end_lr_factor at
  step `config.schedule_steps` (0: `total_steps`), as scenic's compound schedule does (its
  cosine factor spans `steps_per_cycle` − warmup steps)."""
  horizon = int(config.get("schedule_steps", 0) or total_steps)
  warmup = min(int(config.warmup_steps), max(horizon - 1, 0))
  decay_steps = max(horizon - warmup, 1)
  end = config.lr * config.end_lr_factor
  if config.schedule == "cosine":
    decay = optax.cosine_decay_schedule(config.lr, decay_steps, alpha=config.end_lr_factor)
  elif config.schedule == "linear":
    decay = optax.linear_schedule(config.lr, end, decay_steps)
  elif config.schedule == "constant":
    decay = optax.constant_schedule(config.lr)
  else:
    raise ConfigError(f"optim.schedule {config.schedule!r}: use cosine, linear or constant")
  if not warmup:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, config.lr, warmup), decay], [warmup])


def _first_match(path: str, rules: Sequence[tuple[str, Any]], default):
  for pattern, value in rules:
    if re.fullmatch(pattern, path):
      return value
  return default


def labels(params, config) -> Any:
  """Each parameter's group: "frozen" or "lr×<multiplier>"."""
  frozen = [(p, True) for p in config.frozen]
  mults = [(p, float(m)) for p, m in config.lr_mults]
  def label(path):
    if _first_match(path, frozen, False):
      return "frozen"
    return f"lr×{_first_match(path, mults, 1.0):g}"
  return jax.tree.map(label, path_names(params))


def make(config, params, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """→ (the optax transformation, the base learning-rate schedule for logging)."""
  base = schedule(config, total_steps)
  groups = labels(params, config)

  def decay_mask(tree):  # A function, so that it also applies to multi_transform's subtrees.
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, tree)

  def adamw(mult: float):
    return optax.adamw(lambda step: base(step) * mult, b1=config.b1, b2=config.b2,
                       eps=config.eps, weight_decay=config.weight_decay, mask=decay_mask)

  transforms = {}
  for group in set(jax.tree.leaves(groups)):
    transforms[group] = (optax.set_to_zero() if group == "frozen"
                         else adamw(float(group.split("×")[1])))
  chain = []
  if "frozen" in transforms:  # Zero frozen gradients first: they must not count in the norm.
    chain.append(optax.multi_transform(
        {g: optax.set_to_zero() if g == "frozen" else optax.identity() for g in transforms},
        groups))
  if config.grad_clip_norm:
    chain.append(optax.clip_by_global_norm(config.grad_clip_norm))
  chain.append(optax.multi_transform(transforms, groups))
  tx = optax.chain(*chain)
  if config.accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=int(config.accum_steps))
  return tx, base
