"""One model placed on the devices: the mesh, the logical rules, the registered model and its
sharded parameters. The train loop and checkpoint evaluation both start here, so that a
checkpoint is read with the shardings it was trained with.

    setup = model_setup.setup_model(config)            # config: a train config
    setup.model.logits_and_targets(setup.params, batch, rng=None, train=False)
    with sharding.use(setup.mesh, setup.rules): ...    # activation constraints apply

    setup = model_setup.setup_model(config, init=False)    # shapes and shardings only
    params = checkpoint.load_params(workdir, setup.abstract_params)

Reads `config.model` (its `name` picks the registered model), `config.mesh` and
`config.sharding_rules` (absent or None: all devices on `data`, the default rules) and,
when no `rng` is given, `config.seed`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax

from rew_jax import registry
from rew_jax import sharding
from rew_jax.errors import ConfigError
from rew_jax.models import base


@dataclasses.dataclass(frozen=True)
class ModelSetup:
  """What `setup_model` builds.

  Attributes:
    mesh: the (data, fsdp, tensor) device mesh.
    rules: the logical-axis rules (logical name → mesh axes).
    model: the registered model (`models.base.Model`) built from config.model.
    params: initialised parameters on `param_shardings`; None when built with init=False.
    param_shardings: NamedShardings of the parameters, derived from their logical names.
    abstract_params: ShapeDtypeStructs of the parameters carrying `param_shardings`.
  """
  mesh: jax.sharding.Mesh
  rules: tuple
  model: base.Model
  params: Any
  param_shardings: Any
  abstract_params: Any


def setup_model(config, *, rng: jax.Array | None = None, init: bool = True) -> ModelSetup:
  """Builds the mesh, the rules and `config.model`'s model, and initialises its parameters
  directly into their shardings (no full copy on any one device); `init=False` stops at
  shapes and shardings, for callers that load parameters anyway."""
  mesh = sharding.make_mesh(config.get("mesh"))
  rules = sharding.logical_rules(config.get("sharding_rules"))
  if not config.model.get("name"):
    raise ConfigError("config.model.name is missing: the registered model to build "
                      f"(one of {', '.join(registry.MODELS.names())})")
  model = registry.MODELS.get(config.model.name)(config.model)
  rng = jax.random.key(config.get("seed", 0)) if rng is None else rng
  inputs = model.dummy_inputs()
  params = None
  if init:
    variables, shardings = sharding.init_sharded(model.module, rng, *inputs, mesh=mesh,
                                                 rules=rules)
    params, param_shardings = variables["params"], shardings["params"]
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  else:
    boxed = jax.eval_shape(model.module.init, rng, *inputs)
    param_shardings = nn.unbox(sharding.shardings_of(boxed, mesh, rules))["params"]
    abstract = nn.unbox(boxed)["params"]
  abstract_params = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract,
      param_shardings)
  return ModelSetup(mesh, rules, model, params, param_shardings, abstract_params)
