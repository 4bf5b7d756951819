"""Mesh, logical rules and placement on 8 fake CPU devices; sharded == single device."""

import os
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from rew_jax import sharding
from rew_jax.errors import ConfigError, UserError
from rew_jax.models import git

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "models"))
from gitcase import random_params, tiny_config, tiny_inputs  # noqa: E402


def test_mesh_auto_fill_and_errors():
  assert jax.device_count() == 8
  mesh = sharding.make_mesh({"data": -1, "fsdp": 2, "tensor": 2})
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  assert sharding.mesh_shape(None, 8) == (8, 1, 1)
  assert sharding.mesh_shape({"fsdp": -1}, 8) == (1, 8, 1)
  with pytest.raises(ConfigError, match="at most one"):
    sharding.mesh_shape({"data": -1, "fsdp": -1}, 8)
  with pytest.raises(ConfigError, match="not a multiple"):
    sharding.mesh_shape({"data": -1, "tensor": 3}, 8)
  with pytest.raises(ConfigError, match="needs 4 devices"):
    sharding.mesh_shape({"data": 2, "fsdp": 2}, 8)
  with pytest.raises(ConfigError, match="unknown axes"):
    sharding.mesh_shape({"model": 2}, 8)
  with pytest.raises(ConfigError, match="unknown mesh axis"):
    sharding.logical_rules([("embed", "model")])


class FakeDevice:
  """What mesh_utils reads of a device: id, process, kind, slice (CPU devices report slice 0
  whatever their process, as jax's do) and, on TPU, torus coordinates."""
  platform = device_kind = "cpu"

  def __init__(self, id_, process_index, slice_index=0):
    self.id, self.process_index, self.slice_index = id_, process_index, slice_index

  def __repr__(self):
    return f"d{self.id}"


def test_hybrid_mesh_puts_processes_on_the_outer_position_of_the_dcn_axis():
  # 2 hosts × 4 devices, listed interleaved: the grid still groups each host's devices.
  devices = [FakeDevice(i, i % 2) for i in range(8)]
  grid = sharding.device_grid({"data": 1, "fsdp": -1, "tensor": 1, "dcn": {"data": -1}},
                              devices)
  assert grid.shape == (2, 4, 1)
  for host in range(2):
    assert {d.process_index for d in grid[host].flat} == {host}
  grid = sharding.device_grid({"data": 1, "fsdp": 2, "tensor": 2, "dcn": {"data": 2}}, devices)
  assert grid.shape == (2, 2, 2)
  assert [[d.id for d in grid[h].flat] for h in range(2)] == [[0, 2, 4, 6], [1, 3, 5, 7]]
  # fsdp across hosts (dcn fsdp=2): the host is the outer half of the fsdp axis.
  grid = sharding.device_grid({"fsdp": 2, "tensor": 2, "dcn": {"fsdp": -1}}, devices)
  assert grid.shape == (1, 4, 2)
  assert [d.process_index for d in grid[0, :, 0]] == [0, 0, 1, 1]
  with pytest.raises(ConfigError, match=r"config.mesh.dcn \(across 2 processes\).*needs 4"):
    sharding.device_grid({"fsdp": -1, "dcn": {"data": 4}}, devices)
  with pytest.raises(ConfigError, match="needs 8 devices; 4 are available"):
    sharding.device_grid({"fsdp": 8, "dcn": {"data": -1}}, devices)


def test_hybrid_mesh_uses_tpu_slices_as_granules():
  # 2 slices, each of 2 hosts × 2 chips (a 2×2×1 torus): slices, not processes, are the
  # granules.
  devices = [FakeDevice(i, i // 2, slice_index=i // 4) for i in range(8)]
  for d in devices:
    d.platform, d.device_kind, d.core_on_chip = "tpu", "TPU v4", 0
    d.coords = (d.id % 2, (d.id // 2) % 2, 0)
  assert sharding.granules(devices) == (False, 2)
  grid = sharding.device_grid({"fsdp": -1, "dcn": {"data": -1}}, devices)
  assert grid.shape == (2, 4, 1)
  assert [[d.slice_index for d in grid[s].flat] for s in range(2)] == [[0] * 4, [1] * 4]


def test_hybrid_mesh_on_one_process_is_the_plain_mesh():
  mesh = sharding.make_mesh({"fsdp": -1, "tensor": 2, "dcn": {"data": -1}})
  assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 2}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  assert list(mesh.devices.flat) == jax.devices()


@pytest.fixture(scope="module")
def setup():
  model = git.GiT(tiny_config())
  images, prompts, targets = tiny_inputs(batch=8)
  ref_params = random_params(model, images, prompts, targets)
  ref_fn = jax.jit(model.apply)
  ref = np.asarray(ref_fn(ref_params, images, prompts, targets))
  return model, (images, prompts, targets), ref_params, ref, ref_fn


def _sharded_forward(model, inputs, params, shardings, mesh, rules):
  batch = sharding.host_batch_to_global(
      dict(images=np.asarray(inputs[0]), prompts=np.asarray(inputs[1]),
           targets=np.asarray(inputs[2])), mesh)
  with sharding.use(mesh, rules):
    fwd = jax.jit(lambda p, b: model.apply(p, b["images"], b["prompts"], b["targets"]),
                  in_shardings=(shardings, sharding.batch_sharding(mesh)),
                  out_shardings=sharding.batch_sharding(mesh))
    return fwd(params, batch)


def test_fsdp_shards_every_large_matrix(setup):
  model, inputs, ref_params, ref, _ = setup
  mesh = sharding.make_mesh({"fsdp": -1})
  abstract = jax.eval_shape(model.init, jax.random.key(0), *inputs)
  shardings = nn.unbox(sharding.shardings_of(abstract, mesh, sharding.DEFAULT_RULES))
  params = sharding.put_sharded(ref_params, shardings)  # e.g. converted weights
  out = _sharded_forward(model, inputs, params, shardings, mesh, sharding.DEFAULT_RULES)
  replicated = []
  for path, x in jax.tree_util.tree_leaves_with_path(params):
    if x.ndim >= 2 and x.size >= 1024:
      shard = x.sharding.shard_shape(x.shape)
      if np.prod(shard) * 8 != x.size:
        replicated.append(jax.tree_util.keystr(path))
      assert len(x.addressable_shards) == 8
  assert not replicated, replicated
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)


def test_tensor_parallel_sharded_init_and_donated_update(setup):
  model, inputs, _, _, ref_fn = setup
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  # Initialised straight into its shardings (no full copy on one device).
  params, shardings = sharding.init_sharded(model, jax.random.key(0), *inputs, mesh=mesh)
  out = _sharded_forward(model, inputs, params, shardings, mesh, sharding.DEFAULT_RULES)
  ref = np.asarray(ref_fn(jax.tree.map(np.asarray, params), *inputs))
  p = params["params"]
  q = p["decoder"]["layers_0"]["attn"]["query"]["kernel"]  # [D, H, K]
  assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
  assert q.sharding.shard_shape(q.shape) == (16, 2, 8)
  fc1 = p["encoder"]["blocks_0"]["mlp"]["fc1"]["kernel"]  # [D, F]
  assert fc1.sharding.shard_shape(fc1.shape) == (16, 32)
  head = p["head"]["kernel"]  # [D, V]
  assert head.sharding.shard_shape(head.shape) == (16, 64)
  assert out.sharding.shard_shape(out.shape)[0] == 2  # batch over data × fsdp
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)
  fc2 = p["decoder"]["layers_0"]["mlp"]["fc2"]["kernel"]  # [F, D]
  assert fc2.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  with sharding.use(mesh, sharding.DEFAULT_RULES):
    step = jax.jit(lambda p: jax.tree.map(lambda x: x * 0.5, p), in_shardings=(shardings,),
                   out_shardings=shardings, donate_argnums=0)
    halved = step(params)
  assert halved["params"]["decoder"]["layers_0"]["mlp"]["fc2"]["kernel"].sharding == fc2.sharding


def test_missing_rule_is_an_error():
  model, inputs = git.GiT(tiny_config()), tiny_inputs(batch=8)
  abstract = jax.eval_shape(model.init, jax.random.key(0), *inputs)
  rules = tuple(r for r in sharding.DEFAULT_RULES if r[0] != "mlp")
  with pytest.raises(ConfigError, match="'mlp'"):
    sharding.shardings_of(abstract, sharding.make_mesh(), rules)


def test_host_batch_to_global():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  batch = {"x": np.arange(16, dtype=np.float32).reshape(8, 2), "id": np.array(["a"] * 8)}
  out = sharding.host_batch_to_global(batch, mesh)
  assert out["x"].shape == (8, 2)
  assert out["x"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
  assert out["x"].sharding.shard_shape((8, 2)) == (2, 2)
  np.testing.assert_array_equal(np.asarray(out["x"]), batch["x"])
  assert out["id"] is not None and out["id"].dtype.kind == "U"
  with pytest.raises(UserError, match="'x'"):
    sharding.host_batch_to_global({"x": np.zeros((6, 2))}, mesh)
