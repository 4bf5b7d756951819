"""The device mesh, the logical-axis rules, sharded initialisation and global batches.

Models name logical axes only (see rew_jax/models/layers.py); this module is the one place
that knows about devices:

  mesh   = sharding.make_mesh(config.get("mesh"))           # axes data, fsdp, tensor
  rules  = sharding.logical_rules(config.get("sharding_rules"))
  params, shardings = sharding.init_sharded(model, rng, *dummy_inputs, mesh=mesh, rules=rules)
  batch  = sharding.host_batch_to_global(numpy_batch, mesh)  # leading dim over data×fsdp
  with sharding.use(mesh, rules):                            # activation constraints
    step = jax.jit(train_step, in_shardings=..., out_shardings=..., donate_argnums=0)

`config.mesh` maps axis → size, e.g. {"data": -1, "fsdp": 1, "tensor": 1}; one -1 takes
what the device count leaves. The axes are Auto-typed: `jax.make_mesh` otherwise defaults
to Explicit axes, under which a Dense with a sharded contracting dim raises.

Several TPU slices or GPU nodes (a slow data-centre network, DCN, between fast-linked
groups): add a `dcn` group, e.g. {"data": 1, "fsdp": -1, "tensor": 1, "dcn": {"data": -1}}.
The top-level sizes are then those *within* one granule (a TPU slice; elsewhere one
process, i.e. one host), the `dcn` sizes those *across* granules (its -1 takes the granule
count), and each mesh axis is their product, built by `mesh_utils.create_hybrid_device_mesh`
with the granules on the outer position of each axis: only the axes given a `dcn` size > 1
(normally `data`, one gradient all-reduce per step) cross the slow network.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from rew_jax.errors import ConfigError, UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis → mesh axes. Params: embed (widths) over fsdp; heads, mlp, vocab over tensor.
# Activations: batch over data×fsdp; heads/mlp/vocab activations follow their weights.
# Order matters: a mesh axis already used by an array's earlier dim is not reused.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("embed", "fsdp"),
    ("vis_embed", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("pos", None),
    ("layers", None),
    ("norm", None),
)


def mesh_shape(mesh_config: Mapping[str, int] | None, num_devices: int) -> tuple[int, ...]:
  """Sizes of (data, fsdp, tensor) with at most one -1 filled from `num_devices`."""
  cfg = dict(mesh_config or {"data": -1})
  unknown = set(cfg) - set(MESH_AXES)
  if unknown:
    raise ConfigError(f"config.mesh has unknown axes {sorted(unknown)}; known: {MESH_AXES}")
  sizes = [int(cfg.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ConfigError(f"config.mesh {cfg}: at most one axis may be -1")
  fixed = int(np.prod([s for s in sizes if s != -1]))
  if any(s == 0 or s < -1 for s in sizes):
    raise ConfigError(f"config.mesh {cfg}: sizes must be positive or -1")
  if -1 in sizes:
    if num_devices % fixed:
      raise ConfigError(f"config.mesh {cfg}: {num_devices} devices are not a multiple of "
                        f"{fixed}")
    sizes[sizes.index(-1)] = num_devices // fixed
  if int(np.prod(sizes)) != num_devices:
    raise ConfigError(f"config.mesh {cfg} needs {int(np.prod(sizes))} devices; "
                      f"{num_devices} are available")
  return tuple(sizes)


def granules(devices: Sequence[Any]) -> tuple[bool, int]:
  """(process_is_granule, number of granules): TPU slices on TPU, else processes (one per
  host on GPU clusters and on CPU, whose devices report slice 0 whatever their host)."""
  slices = {getattr(d, "slice_index", None) for d in devices}
  if devices[0].platform == "tpu" and None not in slices:
    return False, len(slices)
  return True, len({d.process_index for d in devices})


def device_grid(mesh_config: Mapping[str, Any] | None, devices: Sequence[Any]) -> np.ndarray:
  """The devices arranged as the (data, fsdp, tensor) mesh of `mesh_config` (see the
  module docstring; with a `dcn` group, by mesh_utils.create_hybrid_device_mesh)."""
  cfg = dict(mesh_config or {"data": -1})
  dcn = cfg.pop("dcn", None)
  if not dcn:
    return np.asarray(devices, dtype=object).reshape(mesh_shape(cfg, len(devices)))
  process_is_granule, count = granules(devices)
  if len(devices) % count:
    raise ConfigError(f"{len(devices)} devices do not split evenly over {count} "
                      f"{'processes' if process_is_granule else 'slices'}")
  try:
    dcn_shape = mesh_shape(dict(dcn), count)
  except ConfigError as e:
    raise ConfigError(f"config.mesh.dcn (across {count} "
                      f"{'processes' if process_is_granule else 'slices'}): {e}") from None
  ici_shape = mesh_shape(cfg, len(devices) // count)
  from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top
  return mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices,
                                              process_is_granule=process_is_granule)


def make_mesh(mesh_config: Mapping[str, Any] | None = None,
              devices: Sequence[Any] | None = None) -> jax.sharding.Mesh:
  """A (data, fsdp, tensor) mesh with Auto axis types over `devices` (default: all)."""
  devices = list(devices) if devices is not None else jax.devices()
  if mesh_config is not None and mesh_config.get("dcn"):
    return jax.sharding.Mesh(device_grid(mesh_config, devices), MESH_AXES,
                             axis_types=(AxisType.Auto,) * len(MESH_AXES))
  mesh_config = {k: v for k, v in (mesh_config or {"data": -1}).items() if k != "dcn"}
  shape = mesh_shape(mesh_config, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def logical_rules(rules: Iterable[Sequence[Any]] | None = None) -> tuple:
  """The rules table from config (list of [logical, mesh axis | [axes] | None]) or the
  default; mesh axes are checked against MESH_AXES."""
  if rules is None:
    return DEFAULT_RULES
  out = []
  for rule in rules:
    if len(rule) != 2:
      raise ConfigError(f"config.sharding_rules entry {rule!r} is not (logical, mesh_axes)")
    name, axes = rule
    axes = tuple(axes) if isinstance(axes, (list, tuple)) else axes
    for a in (axes if isinstance(axes, tuple) else (axes,)):
      if a is not None and a not in MESH_AXES:
        raise ConfigError(f"config.sharding_rules maps {name!r} to unknown mesh axis {a!r}")
    out.append((str(name), axes))
  return tuple(out)


@contextlib.contextmanager
def use(mesh: jax.sharding.Mesh, rules: Sequence = DEFAULT_RULES):
  """Mesh + rules in scope, so that the models' activation constraints take effect."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def logical_names(abstract_tree: Any) -> set[str]:
  """Every logical axis name used by the boxed (nn.Partitioned) leaves of a tree."""
  names = set()
  for leaf in jax.tree.leaves(abstract_tree, is_leaf=lambda x: isinstance(x, nn.Partitioned)):
    if isinstance(leaf, nn.Partitioned):
      names.update(n for n in leaf.names if isinstance(n, str))
  return names


def check_rules(abstract_tree: Any, rules: Sequence) -> None:
  """A logical name missing from the rules would silently replicate: make it an error."""
  missing = logical_names(abstract_tree) - {name for name, _ in rules}
  if missing:
    raise ConfigError(f"config.sharding_rules has no rule for logical axes {sorted(missing)}"
                      " (map them to a mesh axis or to None)")


def shardings_of(abstract_tree: Any, mesh: jax.sharding.Mesh, rules: Sequence) -> Any:
  """NamedShardings for a boxed abstract tree (from jax.eval_shape of an init)."""
  check_rules(abstract_tree, rules)
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def init_sharded(model: nn.Module, rng: jax.Array, *args, mesh: jax.sharding.Mesh,
                 rules: Sequence = DEFAULT_RULES, method=None, **kwargs):
  """Initialises `model` directly into its shardings (no full copy on any one device).

  Returns (params, shardings): unboxed params and the matching tree of NamedShardings.
  """
  init = lambda r, *a: nn.unbox(model.init(r, *a, method=method, **kwargs))
  abstract = jax.eval_shape(lambda r, *a: model.init(r, *a, method=method, **kwargs), rng,
                            *args)
  shardings = nn.unbox(shardings_of(abstract, mesh, rules))
  # Outside `use`: activation constraints stay inert, so dummy inputs of any batch size do.
  params = jax.jit(init, out_shardings=shardings)(rng, *args)
  return params, shardings


def put_sharded(tree: Any, shardings: Any) -> Any:
  """Places host arrays (e.g. converted weights) onto the devices with `shardings`."""
  return jax.tree.map(lambda x, s: jax.device_put(np.asarray(x), s), tree, shardings)


def batch_sharding(mesh: jax.sharding.Mesh,
                   batch_axes: Sequence[str] = BATCH_AXES) -> NamedSharding:
  """Leading dim over the batch axes of the mesh, the rest replicated."""
  axes = tuple(a for a in batch_axes if a in mesh.axis_names)
  return NamedSharding(mesh, PartitionSpec(axes or None))


def host_batch_to_global(batch: Mapping[str, Any], mesh: jax.sharding.Mesh,
                         batch_axes: Sequence[str] = BATCH_AXES) -> dict[str, Any]:
  """Per-host numpy batch → global jax.Arrays whose leading dim is split over `batch_axes`.

  Each host passes its own 1/process_count of the global batch; the global leading dim is
  local × process_count. String/object fields stay host-local numpy (ids for reports).
  """
  sharding = batch_sharding(mesh, batch_axes)
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    if value.dtype.kind in "USO":
      out[key] = value
      continue
    try:
      out[key] = jax.make_array_from_process_local_data(sharding, value)
    except ValueError as e:
      raise UserError(f"batch field {key!r} of shape {value.shape} cannot be split over "
                      f"mesh {dict(mesh.shape)} along {tuple(batch_axes)}: {e}") from None
  return out
