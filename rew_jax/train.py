"""The train loop: `train(config, workdir)` on a train config (a config file's `train` section;
`python -m rew_jax train`, in rew_jax/stages/train.py, is its command line).

One `train()` read top to bottom: model on the mesh → input pipeline → init_from →
optimizer → checkpoint restore → evaluators → loop. The model is whatever `config.model.name`
names in `registry.MODELS` (rew_jax/models/base.py): the loop asks it for its flax module and
dummy inputs, the logits, targets and weights of a training batch, its loaders of external
weights and its prediction functions, and knows nothing else about it. The step is a pure
function `(state, batch) -> (state, metrics)` under `jax.jit` with shardings and donation;
side effects (data, logging, checkpoints, evaluation) stay in the loop.

Resume is automatic: a workdir that holds checkpoints continues from the latest one, with
the exact next batch (the Grain iterator state is checkpointed with the model). SIGTERM
(preemption) saves a checkpoint and raises `Preempted`; with several processes, a SIGTERM
to any one of them makes all of them save the same step (`PreemptionNotice`).

`default_config()` lists every key of a train config with its default.
"""

from __future__ import annotations

import functools
import logging
import signal
import time
from typing import Any, Mapping

import flax
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import optax

from rew_jax import checkpoint as ckpt_lib
from rew_jax import config as config_lib
from rew_jax import device_prefetch
from rew_jax import metrics as metrics_lib
from rew_jax import model_setup
from rew_jax import optim
from rew_jax import registry
from rew_jax import sharding
from rew_jax import storage
from rew_jax.data import pipeline
from rew_jax.evaluators import common as eval_common

ConfigDict = config_lib.ConfigDict
log = logging.getLogger(__name__)


def default_config() -> ConfigDict:
  """Every key of a train config, with its default.

  Groups whose default is empty are open here and get their schema from the component they
  configure (`with_defaults`): `model` (the registered model's `default_config()`; `name`
  picks it), `predict` (the model's `predict_config()`), `evals` (named evaluator blocks,
  each checked by its evaluator: evaluators/common.py) and `mesh` (axis sizes, checked by
  rew_jax/sharding.py).
  """
  return ConfigDict(dict(
      seed=0,                       # Parameter init, dropout.
      total_steps=1000,
      log_every=100,                # Steps between train-metric rows (means over the steps).
      model=ConfigDict(),
      input=pipeline.default_config(),
      optim=optim.default_config(),
      loss=ConfigDict(dict(label_smoothing=0.0)),
      # Axis sizes; an absent axis has size 1, and an empty mesh puts every device on
      # `data`. dcn: sizes across TPU slices or hosts (a hybrid mesh, rew_jax/sharding.py),
      # e.g. mesh=dict(fsdp=-1, dcn=dict(data=-1)).
      mesh=ConfigDict(),
      sharding_rules=None,          # [(logical axis, mesh axes)]; None: the default rules.
      checkpoint=ConfigDict(dict(every=1000, keep=3, async_save=True)),
      # Parameters to start from: "" or "none" (from scratch), another run's workdir or
      # checkpoint step directory, or "LOADER:PATH" with one of the model's loaders.
      init_from="",
      evals=ConfigDict(),
      predict=ConfigDict(),
      # Validation-based selection. `metric` (an evaluator's result, e.g.
      # "oven_val/final_score"): the step with its best value (`mode` max or min) is kept
      # beside the newest checkpoint.keep ones, and `eval --step best` finds it. `patience`
      # > 0 also stops when it has not improved for that many evaluations (0: never stops).
      early_stopping=ConfigDict(dict(metric="", patience=0, mode="max")),
      peak_flops_per_device=0.0,    # For MFU; 0: spec sheets, or measured on CPU.
  ))


def schema(config=None) -> ConfigDict:
  """`default_config()` with the schemas of the components `config` names: the model's
  block and its prediction options, from `config.model.name`'s registered model."""
  out = default_config()
  name = ((config or {}).get("model") or {}).get("name")
  if name:
    cls = registry.MODELS.get(name)
    out.model, out.predict = cls.default_config(), cls.predict_config()
  return out


def with_defaults(config) -> ConfigDict:
  """`config` merged over `schema(config)` (rew_jax.config.merge: every key checked, with
  the closest valid keys on a typo, and every absent one filled in, at any depth)."""
  return config_lib.merge(schema(config), config, "train")


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def loss_fn(model, params, batch, rng, *, label_smoothing: float, train: bool,
            num_tasks: int):
  """The model's loss (`model.loss`: token-mean cross-entropy by default) and the per-task
  sums the loop logs (`task_id` indexes the mixture's tasks)."""
  loss, aux = model.loss(params, batch, rng, train=train, label_smoothing=label_smoothing)
  token_loss, weight = aux.pop("token_loss"), aux.pop("weight")
  task = jax.nn.one_hot(batch["task_id"], num_tasks)  # [B, tasks]
  aux.update({"task_loss_sum": jnp.einsum("bt,bk->k", token_loss * weight, task),
              "task_tokens": jnp.einsum("bt,bk->k", weight, task),
              "examples": jnp.sum(batch["mask"]),
              # Bad records the pipeline skipped (input.on_error="skip"): counted and logged.
              "skipped": jnp.sum(batch.get("skipped", jnp.zeros((), jnp.int32))),
              # Targets cut at their task's length (the `pad` op's flag), per task.
              "task_truncated": jnp.einsum(
                  "b,bk->k", (batch.get("target_truncated", jnp.zeros_like(batch["mask"])) *
                              batch["mask"]).astype(jnp.float32), task)})
  return loss, aux


def train_step(state: TrainState, batch, *, model, tx, schedule, label_smoothing, num_tasks):
  """(state, batch) → (state, metrics). Pure; jitted with donation by the loop."""
  rng, step_rng = jax.random.split(state.rng)
  grad_fn = jax.value_and_grad(
      functools.partial(loss_fn, model, label_smoothing=label_smoothing, train=True,
                        num_tasks=num_tasks),
      has_aux=True)
  (loss, aux), grads = grad_fn(state.params, batch, step_rng)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(loss=loss, grad_norm=optax.tree.norm(grads), lr=schedule(state.step), **aux)
  return TrainState(state.step + 1, params, opt_state, rng), metrics


def state_shardings(tx, abstract_params, param_shardings, mesh) -> TrainState:
  """Optimizer-state shardings follow their parameters; everything else is replicated.

  `optax.tree_map_params` finds the copies of the parameter tree inside the optimizer
  state structurally (Adam's mu and nu, multi_transform's groups, MultiSteps' accumulator)
  and maps each onto the parameters' shardings; other leaves (counts) are replicated.
  """
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  masked = lambda x: isinstance(x, optax.MaskedNode)
  opt_shardings = optax.tree_map_params(
      tx, lambda leaf, s: leaf if masked(leaf) else s, abstract_opt, param_shardings,
      transform_non_params=lambda _: replicated,
      # A group's state holds optax.MaskedNode (no array) where its mask leaves a parameter out.
      is_leaf=masked)
  return TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings,
                    rng=replicated)


def _task_metrics(sums: Mapping[str, np.ndarray], task_names) -> dict[str, float]:
  out = {"truncated": int(sums["task_truncated"].sum())}
  for k, task in enumerate(task_names):
    if sums["task_tokens"][k] > 0:
      out[f"loss/{task}"] = float(sums["task_loss_sum"][k] / sums["task_tokens"][k])
    if sums["task_truncated"][k] > 0:
      out[f"truncated/{task}"] = int(sums["task_truncated"][k])
  return out


class Preempted(Exception):
  """Raised by `train` after SIGTERM made it save a checkpoint: the caller should exit."""


class PreemptionNotice:
  """Whether the loop saves and leaves at `step` because of a SIGTERM (a preemption).

  One process: a SIGTERM handler sets a flag. Several: the signal reaches the hosts one at
  a time (or only one), and a host leaving on its own would hang the others in the next
  collective, so the step is agreed. JAX's preemption sync manager (started by
  jax.distributed.initialize) catches SIGTERM itself and spreads the notice through the
  coordination service; `reached_preemption_sync_point(step)`, called at every step by
  every process, is then True on all of them at the same step. No Python handler is
  installed then: it would replace JAX's.
  """

  def __init__(self):
    self.multi = jax.process_count() > 1
    self.raised = False
    self._old = None if self.multi else signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, *_):
    self.raised = True

  def reached(self, step: int) -> bool:
    if self.multi and not self.raised:
      self.raised = multihost_utils.reached_preemption_sync_point(step)
    return self.raised

  def restore(self):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


class _EarlyStopping:
  """Follows `metric`'s best value (`mode` max or min); stops when it has not improved for
  `patience` evaluations (0: never stops)."""

  def __init__(self, config):
    c = dict(config or {})
    self.metric, self.patience = c.get("metric", ""), int(c.get("patience", 0))
    self.mode = c.get("mode", "max")
    if self.mode not in ("max", "min"):
      raise config_lib.ConfigError(f"early_stopping.mode {self.mode!r}: use max or min")
    if self.patience and not self.metric:
      raise config_lib.ConfigError("early_stopping.patience needs early_stopping.metric")
    self.best, self.best_step, self.bad = None, None, 0

  def resume(self, step: int | None, value: float | None) -> None:
    """Continues from a restored run's best (the evaluations since are not counted)."""
    if step is not None:
      self.best, self.best_step = value, step

  def update(self, step: int, results: Mapping[str, float]) -> bool:
    if not self.metric or self.metric not in results:
      return False
    value = float(results[self.metric])
    better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
    if better:
      self.best, self.best_step, self.bad = value, step, 0
    else:
      self.bad += 1
    return bool(self.patience) and self.bad >= self.patience


def train(config, workdir: str, *, evaluators_fn=None) -> dict[str, Any]:
  """Runs the train config `config` in `workdir` (keys checked, defaults filled in).

  `evaluators_fn(model, mesh) -> {name: (evaluator, every)}` replaces the evaluators of
  `config.evals` (`model` is the registered model).

  Returns a dict: `state` (the final TrainState), `metrics` (the last logged train metrics,
  the last results of every evaluator and, with early stopping, `best_step` and
  `best_<metric>`), `model` (the registered model) and `mesh`. Raises `Preempted` after
  SIGTERM, once the checkpoint is saved.
  """
  config = with_defaults(config)
  storage.makedirs(workdir)  # A no-op for object-store workdirs (gs://).

  # ---------------------------------------------------------------------------- Model on the mesh
  rng = jax.random.key(config.seed)
  init_rng, state_rng = jax.random.split(rng)
  # A checkpoint to start from replaces every parameter: skip the random init then.
  setup = model_setup.setup_model(config, rng=init_rng,
                                  init=not ckpt_lib.from_checkpoint(config.init_from))
  mesh, rules, model = setup.mesh, setup.rules, setup.model

  # ---------------------------------------------------------------------------- Input pipeline
  data = pipeline.from_config(config.input)
  data_iter = iter(data)
  task_names = pipeline.task_names()  # task_id k is task_names[k].

  # ---------------------------------------------------------------------------- Init from
  param_shardings = setup.param_shardings
  params = ckpt_lib.init_from(config.init_from, model,
                     setup.abstract_params if setup.params is None else setup.params,
                     param_shardings)

  # ---------------------------------------------------------------------------- Optimizer
  tx, schedule = optim.make(config.optim, params, config.total_steps)
  shardings = state_shardings(tx, setup.abstract_params, param_shardings, mesh)
  with sharding.use(mesh, rules):
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  # The step and rng are made in a jit onto their (replicated) shardings: device_put of a
  # one-device key array onto a mesh that spans other processes is refused.
  step0, state_rng = jax.jit(lambda r: (jnp.zeros((), jnp.int32), r),
                             out_shardings=(shardings.step, shardings.rng))(state_rng)
  state = TrainState(step0, params, opt_state, state_rng)

  # ---------------------------------------------------------------------------- Checkpoint restore
  early = _EarlyStopping(config.early_stopping)
  manager = ckpt_lib.Manager(workdir, keep=config.checkpoint.keep,
                             every=config.checkpoint.every,
                             async_save=config.checkpoint.async_save, config=config,
                             best_metric=early.metric, best_mode=early.mode)
  start = manager.latest_step() or 0
  if start:
    abstract = ckpt_lib.abstract_with_shardings(state, shardings)
    state = manager.restore(start, abstract, data_iter)
    log.info("resumed from step %d in %s", start, manager.directory)
    if early.metric:  # The best so far, from the kept checkpoints' metrics.
      early.resume(*manager.best())

  # ---------------------------------------------------------------------------- Evaluators
  # name → (evaluator, every); the evaluators call the model's prediction functions.
  if evaluators_fn is not None:
    evaluators = evaluators_fn(model, mesh)
  else:
    evaluators = eval_common.from_train_config(config, model, workdir=workdir)

  # ---------------------------------------------------------------------------- Loop
  jitted_step = jax.jit(
      functools.partial(train_step, model=model, tx=tx, schedule=schedule,
                        label_smoothing=config.loss.label_smoothing,
                        num_tasks=len(task_names)),
      in_shardings=(shardings, sharding.batch_sharding(mesh)),
      out_shardings=(shardings, None), donate_argnums=(0,))
  writer = metrics_lib.Writer(workdir, config=config, total_steps=config.total_steps,
                              start_step=start)
  preemption = PreemptionNotice()
  # Grain's next() and the transfer of step+1's batch run on a thread during step's compute;
  # checkpoints take the iterator state of the batches handed out (device_prefetch.py).
  feed = device_prefetch.DevicePrefetch(
      data_iter, lambda host: sharding.host_batch_to_global(
          {k: v for k, v in host.items() if np.asarray(v).dtype.kind not in "USO"}, mesh))
  last: dict[str, Any] = {}
  pending, step_fn, stop = [], None, False  # Device metrics of the steps since the last log.
  warned_truncation = False
  tracked = None
  try:
    with sharding.use(mesh, rules):
      for step in range(start + 1, config.total_steps + 1):
        batch = next(feed)
        first = step_fn is None
        if first:  # Compile once, explicitly: its time and FLOPs are reported.
          t0 = time.time()
          step_fn = jitted_step.lower(state, batch).compile()
          cost = step_fn.cost_analysis()
          cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        state, metrics = step_fn(state, batch)
        if first:  # Throughput counts from the end of this step (metrics.Writer).
          jax.block_until_ready(metrics)
          writer.note_compiled(step, (cost or {}).get("flops"), time.time() - t0)
        # Kept on device and summed on the host at log time: adding them here would
        # dispatch a few tiny computations every step.
        pending.append(metrics)
        if step % config.log_every == 0 or step == config.total_steps:
          fetched = jax.device_get(pending)
          sums = jax.tree.map(lambda *xs: np.sum(xs, axis=0), *fetched)
          n = len(fetched)
          last = {"loss": float(sums["loss"]) / n, "grad_norm": float(sums["grad_norm"]) / n,
                  "lr": float(fetched[-1]["lr"]), "skipped": int(sums["skipped"]),
                  **_task_metrics(sums, task_names)}
          writer.log_train(step, last, examples=int(sums["examples"]))
          if last["truncated"] and not warned_truncation:
            warned_truncation = True
            log.warning("%d targets cut at their task's length in steps up to %d (%s); see "
                        "`truncated` in metrics.jsonl and input.tasks.TASK.target_len",
                        last["truncated"], step, {k: v for k, v in last.items()
                                                  if k.startswith("truncated/")})
          pending = []
        tracked = None  # {metric: value} when this step evaluated early.metric.
        for name, (evaluator, every) in evaluators.items():
          if step % every == 0 or step == config.total_steps:
            results = dict(evaluator.run(state.params, step=step))  # Names carry a prefix.
            writer.log_eval(step, name, results)
            last.update(results)
            stop = early.update(step, results) or stop
            if early.metric in results:
              tracked = {early.metric: float(results[early.metric])}
        manager.maybe_save(step, state, feed, metrics=tracked)
        if tracked and early.best_step == step:  # A new best between save steps: keep it.
          manager.save(step, state, feed, force=True, metrics=tracked)
        if preemption.reached(step) or stop:
          why = "SIGTERM" if preemption.raised else (
              f"early stopping ({early.metric} best {early.best} at step {early.best_step})")
          log.warning("%s: saving step %d and exiting", why, step)
          manager.save(step, state, feed, force=True, metrics=tracked)
          break
      else:
        manager.save(config.total_steps, state, feed, force=True, metrics=tracked)
  finally:
    feed.close()
    preemption.restore()
    manager.close()
    writer.close()
  if preemption.raised:
    raise Preempted(f"preempted at step {step}; rerun the same command to resume")
  if early.best_step is not None:
    last["best_step"], last["best_" + early.metric] = early.best_step, early.best
  return {"state": state, "metrics": last, "model": model, "mesh": mesh}
