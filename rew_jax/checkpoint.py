"""Checkpoints with orbax: train state + Grain iterator state + config, in one step folder.

    manager = checkpoint.Manager(workdir, keep=3, every=1000)
    start = manager.latest_step() or 0                            # resume if any
    if start:
      state = manager.restore(start, abstract_state, data_iter)   # iterator restored in place
    manager.maybe_save(step, state, data_iter)                    # async every `every` steps
    manager.save(step, state, data_iter, force=True)              # e.g. on SIGTERM
    manager.close()

    # Keeping the best step by a validation metric beside the newest `keep`:
    manager = checkpoint.Manager(workdir, keep=3, best_metric="oven_val/final_score")
    manager.save(step, state, data_iter, metrics={"oven_val/final_score": 41.2})
    checkpoint.best_step(workdir, "oven_val/final_score")         # e.g. for `eval --step best`

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
import numpy as np
import orbax.checkpoint as ocp

from rew_jax import sharding
from rew_jax import storage
from rew_jax.errors import ConfigError, UserError

# tensorstore's words for a request it gave up on after its retries (orbax passes the error
# on as a ValueError, like a mismatched tree); the message goes on to name the object.
_RETRIES_EXHAUSTED = "retry attempts failed"


class Manager:
  """A thin orbax CheckpointManager: the items are `state`, `data` and `config`.

  With `best_metric`, the step whose saved metrics hold the best value of it (`best_mode`
  max or min) is kept beside the newest `keep` steps, whatever its age: orbax's LatestN and
  BestN preservation policies, either one keeping a step. Steps saved without that metric
  (periodic saves between evaluations) only count for LatestN.
  """

  def __init__(self, workdir: str, *, keep: int = 3, every: int = 1000, async_save: bool = True,
               config: Any = None, best_metric: str = "", best_mode: str = "max"):
    self.directory = os.path.join(storage.absolute(workdir), "checkpoints")
    self.every = every
    self.config = config
    self.best_metric = best_metric
    if best_metric:
      metric_fn = _metric_fn(best_metric, best_mode)
      policies = ocp.checkpoint_managers
      options = ocp.CheckpointManagerOptions(
          enable_async_checkpointing=async_save, create=True,
          best_fn=metric_fn, best_mode=best_mode,
          preservation_policy=policies.AnyPreservationPolicy([
              policies.LatestN(n=keep),
              # BestN keeps the n highest (reverse=False) or lowest (reverse=True) values.
              policies.BestN(get_metric_fn=metric_fn, reverse=best_mode == "min", n=1,
                             keep_checkpoints_without_metrics=False)]))
    else:
      options = ocp.CheckpointManagerOptions(
          max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=options,
        item_names=("state", "data", "config"),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler(),
                       "config": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best(self) -> tuple[int | None, float | None]:
    """(step, value) of the kept step with the best `best_metric`; (None, None) when no
    kept step carries it."""
    if not self.best_metric:
      raise ValueError("best() needs a Manager made with best_metric")
    step = self._manager.best_step()
    metrics = self._manager.metrics(step) if step is not None else None
    if not metrics or self.best_metric not in metrics:
      return None, None
    return step, float(metrics[self.best_metric])

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, data_iter=None, *, force: bool = False,
           metrics: dict[str, float] | None = None) -> bool:
    """Saves `step` (False when it is not a save step, or is already saved). `metrics`
    (e.g. the validation results of this step) rank it for `best_metric`."""
    if step in self._manager.all_steps():
      return False
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    if self.config is not None:
      items["config"] = ocp.args.JsonSave(json.loads(self.config.to_json()))
    if metrics is not None and self.best_metric:
      metrics = {k: float(v) for k, v in metrics.items()}
    else:
      metrics = None  # orbax writes metrics only for a manager that ranks by them.
    return self._manager.save(step, args=ocp.args.Composite(**items), force=force,
                              metrics=metrics)

  def maybe_save(self, step: int, state, data_iter=None, *,
                 metrics: dict[str, float] | None = None) -> bool:
    if self.every and step % self.every == 0:
      return self.save(step, state, data_iter, metrics=metrics)
    return False

  def restore(self, step: int, abstract_state, data_iter=None):
    """Restores `state` (onto abstract_state's shardings) and, in place, the iterator."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except (ValueError, KeyError, FileNotFoundError) as e:
      if _RETRIES_EXHAUSTED in str(e):  # The store did not answer; the checkpoint may be fine.
        raise storage.StorageError(f"checkpoint {self.directory}/{step}: {e}") from e
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


def _metric_fn(name: str, mode: str):
  """metrics → the value orbax ranks by; a step saved without `name` ranks last."""
  if mode not in ("max", "min"):
    raise UserError(f"best_mode {mode!r}: use max or min")
  worst = float("-inf") if mode == "max" else float("inf")
  return lambda metrics: float(metrics.get(name, worst))


def best_step(workdir: str, metric: str, mode: str = "max") -> int:
  """The step of a run's workdir with the best saved `metric` (see Manager's best_metric)."""
  directory = os.path.join(storage.absolute(workdir), "checkpoints")
  if not storage.isdir(directory):
    raise UserError(f"{workdir}: no checkpoints")
  manager = ocp.CheckpointManager(directory, item_names=("state",), options=(
      ocp.CheckpointManagerOptions(best_fn=_metric_fn(metric, mode), best_mode=mode,
                                   read_only=True)))
  step = manager.best_step()
  # best_step falls back to nothing useful when no step carries metrics: say so.
  if step is None or manager.metrics(step) is None or metric not in manager.metrics(step):
    raise UserError(f"{directory}: no checkpoint was saved with the metric {metric!r} "
                    "(early_stopping.metric names it in the train config)")
  return step


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


# -------------------------------------------------------------------------------------------
# Parameters a run starts from (train.init_from), and a run's saved config.


def from_checkpoint(source: str) -> bool:
  """Whether init_from `source` names another run's workdir or step directory."""
  if not source or source.lower() == "none":
    return False
  kind, sep, path = source.partition(":")
  return not (sep and kind.isidentifier() and not path.startswith("//"))  # gs://... is a path.


def init_from(source: str, model, params, shardings):
  """The parameters a run starts from, on `shardings` (`params` is the fresh init, or only
  its ShapeDtypeStructs when `source` is a checkpoint, which needs no random init):
    "" or "none"    `params` (from scratch);
    LOADER:PATH     one of `model.loaders` (e.g. hf_git, hf_clip for GiT) on PATH;
    otherwise       another run's workdir or checkpoint step directory: its parameters
                    only, each read by every host straight onto its sharding (orbax partial
                    restore); the optimizer state and the rest are never read.
  """
  if not source or source.lower() == "none":
    return params
  if from_checkpoint(source):
    return load_params(source, abstract_with_shardings(params, shardings))
  kind, _, path = source.partition(":")
  if kind not in model.loaders:
    raise ConfigError(
        f"init_from={source!r}: this model has no loader {kind!r} (it has: "
        f"{', '.join(sorted(model.loaders)) or 'none'}); a workdir or checkpoint needs no prefix")
  new = model.loaders[kind](path, params)
  expected = jax.tree.map(lambda x: x.shape, params)
  got = jax.tree.map(lambda x: np.shape(x), new)
  if expected != got:
    raise ConfigError(f"init_from={source!r}: its parameter shapes do not match "
                                 "config.model (check variant, image_size, decoder, vocab)")
  return sharding.put_sharded(new, shardings)


def step_dir(workdir: str, step: int) -> str:
  return os.path.join(storage.absolute(workdir), "checkpoints", str(step))


def saved_config(workdir: str, step: int) -> dict:
  """The train config (a plain dict, defaults filled in) saved with `workdir`'s checkpoint
  `step`: what that run was trained with, whatever its config file says now."""
  path = os.path.join(step_dir(workdir, step), "config")
  if not storage.isdir(path):
    raise UserError(f"{step_dir(workdir, step)}: no saved config (not a rew_jax checkpoint, "
                    "or one saved without its config)")
  return ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(path)
