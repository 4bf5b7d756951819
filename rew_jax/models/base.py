"""What the train loop, `model_setup` and the evaluators need from a registered model.

A model registers a `Model` subclass under the name that `config.model.name` gives, in the
module of that name (`rew_jax/models/git.py` registers "git"; a module elsewhere is named as
"my_project.models:name"):

    @registry.MODELS.register("git")
    class GiTModel(base.Model): ...

and everything else reads it through this interface, never through the model's own modules:

    model = registry.MODELS.get(config.model.name)(config.model)
    variables = model.module.init(rng, *model.dummy_inputs())        # shapes and shardings
    logits, targets, weights = model.logits_and_targets(params, batch, rng=rng, train=True)
    params = model.loaders["hf_git"](path, params)                   # init_from="hf_git:path"
    fns = model.predict_fns(config.predict)                          # name → fn(params, batch)

Dimensions: B batch, T target positions, V classes (the vocabulary for a text decoder).

    loss, aux = model.loss(params, batch, rng, train=True, label_smoothing=0.1)
    model.default_config(), model.predict_config()                   # its config schemas

`loss` is cross-entropy over what `logits_and_targets` weights unless a model overrides it;
the loop owns per-task bookkeeping (sums of aux's `token_loss` over `weight`, by task_id).
`params` is always the `params` collection (not the variables dict), as trained and saved.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from rew_jax.config import ConfigDict
from rew_jax.errors import ConfigError

# fn(path, params) → params: weights from outside the project, as a host tree with the
# structure and shapes of `params` (the fresh initialisation, for loaders that replace only
# part of the model).
Loader = Callable[[str, Any], Any]
# fn(params, batch, **kw) → dict of arrays with a leading batch dimension; jitted.
PredictFn = Callable[..., Mapping[str, Any]]


class Model:
  """Base class of registered models: a flax module and what the loop needs around it.

  Subclasses set `module` in `__init__` and implement `dummy_inputs` and
  `logits_and_targets`; `loaders` and `predict_fns` are optional (none by default).

  Attributes:
    config: the `config.model` block the model was built from.
    module: the flax linen module; its parameters carry logical axis names only.
  """

  config: Any
  module: nn.Module

  def __init__(self, config):
    self.config = config

  @classmethod
  def default_config(cls) -> ConfigDict:
    """Every key of this model's `config.model` block with its default (its schema: the
    train config's `model` section is merged over it, rew_jax.config.merge)."""
    return ConfigDict()

  @classmethod
  def predict_config(cls) -> ConfigDict:
    """Every key of the `config.predict` block of `predict_fns`, with its default."""
    return ConfigDict()

  def loss(self, params, batch: Mapping[str, jax.Array], rng: jax.Array | None, *,
           train: bool, label_smoothing: float = 0.0) -> tuple[jax.Array, dict[str, Any]]:
    """(scalar loss, aux) of a training batch: by default token-mean cross-entropy
    (label-smoothed) over the positions `logits_and_targets` weights, in real examples
    (`mask`). aux: `token_loss` [B, T] and `weight` [B, T] (what the loop sums per task).
    A model with another objective overrides this and returns the same aux keys."""
    logits, targets, weights = self.logits_and_targets(params, batch, rng=rng, train=train)
    labels = optax.smooth_labels(jax.nn.one_hot(targets, logits.shape[-1]), label_smoothing)
    token_loss = optax.softmax_cross_entropy(logits, labels)
    weight = weights * (batch["mask"][:, None] > 0)
    loss = jnp.sum(token_loss * weight) / jnp.maximum(jnp.sum(weight), 1.0)
    return loss, {"token_loss": token_loss, "weight": weight}

  def dummy_inputs(self, batch: int = 1) -> tuple[Any, ...]:
    """Arguments of `module.init(rng, *inputs)`, of the configured shapes (zeros)."""
    raise NotImplementedError

  def logits_and_targets(self, params, batch: Mapping[str, jax.Array], *, rng: jax.Array | None,
                         train: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The teacher-forced forward pass of a training batch.

    Returns logits float32 [B,T,V], targets int32 [B,T] (the class to predict at each
    position) and weights float32 [B,T] (1 where a position counts in the loss). `rng`
    drives dropout when `train`.
    """
    raise NotImplementedError

  @property
  def loaders(self) -> Mapping[str, Loader]:
    """name → loader of external weights, for `init_from="name:path"`."""
    return {}

  def predict_fns(self, predict_config: Mapping[str, Any] | None = None
                  ) -> dict[str, PredictFn]:
    """name → jitted prediction function over `params`, configured by `config.predict`;
    evaluators pick theirs by name (`pred` in an evals block)."""
    del predict_config
    return {}


class FrozenImageModel(Model):
  """A frozen image-feature model (CLIP, DINOv2): square images in, one embedding out.

  Subclasses set `name`, `spec` (with `image_size`) and `module` (images → features), and
  may override `embedding` (features → [B, E]). They are evaluated with `total_steps=0`
  (rew_jax/evaluators/checkpoint_eval.py), never trained."""

  name: str

  def dummy_inputs(self, batch: int = 1):
    size = self.spec.image_size
    return (jnp.zeros((batch, size, size, 3), jnp.float32),)

  def logits_and_targets(self, params, batch, *, rng, train):
    raise ConfigError(f"{self.name} is a frozen feature model: evaluate it (total_steps=0), "
                      "it has no training objective here")

  def embedding(self, features: jax.Array) -> jax.Array:
    return features

  def predict_fns(self, predict_config=None):
    del predict_config

    def embed(params, batch):
      return {"embedding": self.embedding(self.module.apply({"params": params},
                                                            batch["image"]))}

    return {"embed": jax.jit(embed)}
