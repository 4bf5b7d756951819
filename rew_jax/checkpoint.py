"""Checkpoints with orbax: train state + Grain iterator state + config, in one step folder.

    manager = checkpoint.Manager(workdir, keep=3, every=1000)
    state, step = manager.restore_or(abstract_state, data_iter)   # resume if any
    manager.maybe_save(step, state, data_iter)                    # async every `every` steps
    manager.save(step, state, data_iter, force=True)              # e.g. on SIGTERM
    manager.close()

The state is restored onto the shardings carried by `abstract_state` (ShapeDtypeStructs with
`.sharding`), so a run resumes on any mesh. Each process writes its own Grain iterator
state (grain's orbax handler), which makes resume exact on multi-host runs too.
"""

from __future__ import annotations

import json
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from rew_jax.errors import UserError


class Manager:
  """A thin orbax CheckpointManager: the items are `state`, `data` and `config`."""

  def __init__(self, workdir: str, *, keep: int = 3, every: int = 1000, async_save: bool = True,
               config: Any = None):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.every = every
    self.config = config
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True),
        item_names=("state", "data", "config"),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler(),
                       "config": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, data_iter=None, *, force: bool = False) -> bool:
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    if self.config is not None:
      items["config"] = ocp.args.JsonSave(json.loads(self.config.to_json()))
    return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

  def maybe_save(self, step: int, state, data_iter=None) -> bool:
    if self.every and step % self.every == 0:
      return self.save(step, state, data_iter)
    return False

  def restore(self, step: int, abstract_state, data_iter=None):
    """Restores `state` (onto abstract_state's shardings) and, in place, the iterator."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except (ValueError, KeyError, FileNotFoundError) as e:
      raise UserError(f"checkpoint {self.directory}/{step} cannot be restored into this "
                      f"config's state: {e}") from None
    return restored["state"]

  def restore_or(self, abstract_state, data_iter=None, init_fn=None):
    """→ (state, step): the latest checkpoint if there is one, else `init_fn()` at step 0."""
    step = self.latest_step()
    if step is None:
      return (init_fn() if init_fn else None), 0
    return self.restore(step, abstract_state, data_iter), step

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_with_shardings(tree, shardings):
  """ShapeDtypeStructs of `tree` (arrays or structs) carrying `shardings`."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def load_params(workdir_or_step_dir: str, abstract_params=None):
  """The `params` of another run's checkpoint (pretrain → fine-tune initialisation).

  Accepts a workdir (its latest step is used) or a step directory; restores onto
  `abstract_params`' shardings when given.
  """
  path = os.path.abspath(workdir_or_step_dir)
  if os.path.isdir(os.path.join(path, "checkpoints")):
    manager = ocp.CheckpointManager(os.path.join(path, "checkpoints"),
                                    item_names=("state",))
    step = manager.latest_step()
    if step is None:
      raise UserError(f"{path}: no checkpoint to initialise from")
    path = os.path.join(path, "checkpoints", str(step))
  state_dir = os.path.join(path, "state")
  if not os.path.isdir(state_dir):
    raise UserError(f"{path}: not a rew_jax checkpoint (no state/ folder)")
  restored = ocp.StandardCheckpointer().restore(state_dir)
  params = restored["params"]
  if abstract_params is not None:
    params = jax.tree.map(lambda x, a: jax.device_put(x, a.sharding), params, abstract_params)
  return params
