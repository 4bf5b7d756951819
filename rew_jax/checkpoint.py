"""Checkpoints with orbax: train state + Grain iterator state + config, in one step folder.

    manager = checkpoint.Manager(workdir, keep=3, every=1000)
    start = manager.latest_step() or 0                            # resume if any
    if start:
      state = manager.restore(start, abstract_state, data_iter)   # iterator restored in place
    manager.maybe_save(step, state, data_iter)                    # async every `every` steps
    manager.save(step, state, data_iter, force=True)              # e.g. on SIGTERM
    manager.close()

    params = checkpoint.load_params(other_workdir, abstract_params)  # params only (init_from)

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

from rew_jax import storage
from rew_jax.errors import UserError


class Manager:
  """A thin orbax CheckpointManager: the items are `state`, `data` and `config`."""

  def __init__(self, workdir: str, *, keep: int = 3, every: int = 1000, async_save: bool = True,
               config: Any = None):
    self.directory = os.path.join(storage.absolute(workdir), "checkpoints")
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

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_with_shardings(tree, shardings):
  """ShapeDtypeStructs of `tree` (arrays or structs) carrying `shardings`."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def latest_step(workdir: str) -> int | None:
  """The latest checkpoint step in a run's workdir, None when it has none."""
  directory = os.path.join(storage.absolute(workdir), "checkpoints")
  if not storage.isdir(directory):
    return None
  return ocp.CheckpointManager(directory, item_names=("state",)).latest_step()


def _saved_params(state_dir: str):
  """Shape and dtype metadata of the `params` saved in a step's state/ folder."""
  metadata = ocp.PyTreeCheckpointer().metadata(state_dir)
  tree = getattr(metadata, "item_metadata", metadata)
  tree = getattr(tree, "tree", tree)
  if "params" not in tree:
    raise UserError(f"{state_dir}: the saved state has no params")
  return tree["params"]


def _mismatches(saved, abstract) -> list[str]:
  """Key paths whose presence or shape differ between two trees of arrays or structs."""
  shapes = lambda t: {jax.tree_util.keystr(p): tuple(x.shape)
                      for p, x in jax.tree_util.tree_flatten_with_path(t)[0]}
  a, b = shapes(saved), shapes(abstract)
  return [f"{k}: saved {a.get(k, 'absent')}, expected {b.get(k, 'absent')}"
          for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def load_params(workdir_or_step_dir: str, abstract_params=None):
  """The `params` of another run's checkpoint (pretrain → fine-tune initialisation).

  Accepts a workdir (its latest step is used) or a step directory. With `abstract_params`
  (ShapeDtypeStructs carrying shardings) only the parameters are read, each straight onto
  its sharding, and their names and shapes must match; without, the host arrays.
  """
  path = storage.absolute(workdir_or_step_dir)
  if storage.isdir(os.path.join(path, "checkpoints")):
    step = latest_step(path)
    if step is None:
      raise UserError(f"{path}: no checkpoint to initialise from")
    path = os.path.join(path, "checkpoints", str(step))
  state_dir = os.path.join(path, "state")
  if not storage.isdir(state_dir):
    raise UserError(f"{path}: not a rew_jax checkpoint (no state/ folder)")
  if abstract_params is None:
    return ocp.StandardCheckpointer().restore(state_dir)["params"]
  wrong = _mismatches(_saved_params(state_dir), abstract_params)
  if wrong:
    raise UserError(f"{path}: its parameters do not match the model's ({len(wrong)} differ, "
                    f"e.g. {'; '.join(wrong[:3])}); check config.model")
  # partial_restore: the optimizer state and the rest of the train state are not read.
  restored = ocp.PyTreeCheckpointer().restore(state_dir, args=ocp.args.PyTreeRestore(
      item={"params": abstract_params},
      restore_args={"params": ocp.checkpoint_utils.construct_restore_args(abstract_params)},
      partial_restore=True))
  return restored["params"]
