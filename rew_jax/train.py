"""The train loop: `python -m rew_jax train --config configs/<recipe>.py[:arg] --workdir W`.

One `main()` read top to bottom: mesh → input pipeline → model → shard & init → optimizer →
checkpoint restore → evaluators → loop. The step is a pure function
`(state, batch) -> (state, metrics)` under `jax.jit` with shardings and donation; side
effects (data, logging, checkpoints, evaluation) stay in the loop.

Resume is automatic: a workdir that holds checkpoints continues from the latest one, with
the exact next batch (the Grain iterator state is checkpointed with the model). SIGTERM
(preemption) saves a checkpoint and exits cleanly.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import time
from typing import Any, Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rew_jax import checkpoint as ckpt_lib
from rew_jax import config as config_lib
from rew_jax import distributed
from rew_jax import metrics as metrics_lib
from rew_jax import optim
from rew_jax import registry
from rew_jax import sharding
from rew_jax.data import pipeline
from rew_jax.data import tasks as tasks_lib
from rew_jax.evaluators import common as eval_common
from rew_jax.evaluators import predict_fns
from rew_jax.models import convert
from rew_jax.models import git as git_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def loss_fn(model, params, batch, rng, *, label_smoothing: float, train: bool):
  """Token-mean cross-entropy (label-smoothed) over real target tokens, and per-task sums.

  `target` holds the tokens to predict, EOS included, 0 after it; the decoder reads them
  shifted right behind BOS, as decoding feeds them.
  """
  target = batch["target"]
  target_in = jnp.concatenate(
      [jnp.full_like(target[:, :1], git_lib.BOS_ID), target[:, :-1]], axis=1)
  logits = model.apply({"params": params}, batch["image"], batch["prompt"], target_in,
                       train=train, rngs={"dropout": rng})
  vocab = logits.shape[-1]
  labels = optax.smooth_labels(jax.nn.one_hot(target, vocab), label_smoothing)
  token_loss = optax.softmax_cross_entropy(logits, labels)
  weight = ((target != git_lib.PAD_ID) & (batch["mask"][:, None] > 0)).astype(jnp.float32)
  loss = jnp.sum(token_loss * weight) / jnp.maximum(jnp.sum(weight), 1.0)
  task = jax.nn.one_hot(batch["task_id"], len(tasks_lib.TASKS))  # [B, tasks]
  aux = {"task_loss_sum": jnp.einsum("bt,bk->k", token_loss * weight, task),
         "task_tokens": jnp.einsum("bt,bk->k", weight, task),
         "examples": jnp.sum(batch["mask"])}
  return loss, aux


def train_step(state: TrainState, batch, *, model, tx, schedule, label_smoothing):
  """(state, batch) → (state, metrics). Pure; jitted with donation by the loop."""
  rng, step_rng = jax.random.split(state.rng)
  grad_fn = jax.value_and_grad(
      functools.partial(loss_fn, model, label_smoothing=label_smoothing, train=True),
      has_aux=True)
  (loss, aux), grads = grad_fn(state.params, batch, step_rng)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(loss=loss, grad_norm=optax.tree.norm(grads), lr=schedule(state.step), **aux)
  return TrainState(state.step + 1, params, opt_state, rng), metrics


def _state_shardings(tx, abstract_params, param_shardings, mesh):
  """Optimizer-state shardings follow their parameters; everything else is replicated.

  An optimizer-state leaf belongs to the parameter whose key path ends its own (Adam's
  `...mu['decoder']['layers_0']...['kernel']`) and has its shape. Matching paths rather
  than tree structure also covers multi_transform's masked groups and MultiSteps.
  """
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  by_path = {}
  for (path, p), (_, s) in zip(jax.tree_util.tree_flatten_with_path(abstract_params)[0],
                               jax.tree_util.tree_flatten_with_path(param_shardings)[0]):
    by_path[jax.tree_util.keystr(path)] = (p.shape, s)

  def sharding_of(path, leaf):
    key = jax.tree_util.keystr(path)
    for param_path, (shape, s) in by_path.items():
      if key.endswith(param_path) and tuple(leaf.shape) == tuple(shape):
        return s
    return replicated

  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  opt_shardings = jax.tree_util.tree_map_with_path(sharding_of, abstract_opt)
  return TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings,
                    rng=replicated)


def _task_metrics(sums: Mapping[str, np.ndarray]) -> dict[str, float]:
  out = {}
  for k, task in enumerate(tasks_lib.TASKS):
    if sums["task_tokens"][k] > 0:
      out[f"loss/{task}"] = float(sums["task_loss_sum"][k] / sums["task_tokens"][k])
  return out


class Preempted(Exception):
  """Raised by `train` after SIGTERM made it save a checkpoint: the caller should exit."""


class _Preempted:
  """Set by SIGTERM; the loop checkpoints and leaves at the next step boundary."""

  def __init__(self):
    self.flag = False
    self._old = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, *_):
    self.flag = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._old)


def config_evaluators(config, workdir: str):
  """The evaluators of `config.evals` (see evaluators/common.py), as an evaluators_fn:
  (model, mesh) → {name: (evaluator, every)}; `config.predict` configures decoding."""
  if not config.get("evals"):
    return None

  def build(model, mesh):
    del mesh  # Prediction runs on the params' own shardings.
    fns = predict_fns.from_config(model, config.get("predict"))
    evaluators = eval_common.from_config(config.evals, fns, workdir=workdir)
    return {name: (ev, int(config.evals[name].get("every", config.total_steps)))
            for name, ev in evaluators.items()}

  return build


class _EarlyStopping:
  """Stops when `metric` has not improved for `patience` evaluations (0: never stops)."""

  def __init__(self, config):
    c = dict(config or {})
    self.metric, self.patience = c.get("metric", ""), int(c.get("patience", 0))
    self.best, self.best_step, self.bad = None, None, 0

  def update(self, step: int, results: Mapping[str, float]) -> bool:
    if not self.patience or self.metric not in results:
      return False
    value = results[self.metric]
    if self.best is None or value > self.best:
      self.best, self.best_step, self.bad = value, step, 0
    else:
      self.bad += 1
    return self.bad >= self.patience


def init_from(source: str, model_config, params, shardings):
  """Parameters to start from, placed on `shardings`:
    hf_git:DIR    a HF GitForCausalLM directory (all of the model; shapes must match);
    hf_clip:DIR   a HF CLIP vision directory (the image encoder; the rest keeps `params`);
    otherwise     another run's workdir or checkpoint step directory.
  """
  kind, sep, path = source.partition(":")
  if sep and kind == "hf_git":
    new = convert.git_to_params(convert.read_state_dict(path), model_config, path)["params"]
  elif sep and kind == "hf_clip":
    encoder = convert.clip_vision_to_params(convert.read_state_dict(path), model_config, path)
    new = dict(jax.device_get(params), encoder=encoder)
  else:
    return ckpt_lib.load_params(source, ckpt_lib.abstract_with_shardings(params, shardings))
  expected = jax.tree.map(lambda x: x.shape, params)
  got = jax.tree.map(lambda x: x.shape, new)
  if expected != got:
    raise config_lib.ConfigError(f"init_from={source!r}: its parameter shapes do not match "
                                 "config.model (check variant, image_size, decoder, vocab)")
  return sharding.put_sharded(new, shardings)


def train(config, workdir: str, *, evaluators_fn=None) -> dict[str, Any]:
  """Runs `config` in `workdir`; returns the last logged metrics (and eval results)."""
  if "://" not in workdir:  # Object-store workdirs (gs://) need no directory.
    os.makedirs(workdir, exist_ok=True)

  # ---------------------------------------------------------------------------- Mesh
  mesh = sharding.make_mesh(config.get("mesh"))
  rules = sharding.logical_rules(config.get("sharding_rules"))

  # ---------------------------------------------------------------------------- Input pipeline
  data = pipeline.from_config(config.input, train=True)
  data_iter = iter(data)

  # ---------------------------------------------------------------------------- Model
  model = registry.MODELS.get(config.model.name)(config.model)
  spec = git_lib.parse_config(config.model)

  # ---------------------------------------------------------------------------- Shard & init
  rng = jax.random.key(config.seed)
  init_rng, state_rng = jax.random.split(rng)
  variables, variable_shardings = sharding.init_sharded(
      model, init_rng, *git_lib.dummy_inputs(spec), mesh=mesh, rules=rules)
  params, param_shardings = variables["params"], variable_shardings["params"]
  if config.get("init_from"):
    params = init_from(config.init_from, config.model, params, param_shardings)

  # ---------------------------------------------------------------------------- Optimizer
  tx, schedule = optim.make(config.optim, params, config.total_steps)
  abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  state_shardings = _state_shardings(tx, abstract_params, param_shardings, mesh)
  with sharding.use(mesh, rules):
    opt_state = jax.jit(tx.init, out_shardings=state_shardings.opt_state)(params)
  state = TrainState(jnp.zeros((), jnp.int32), params, opt_state, state_rng)
  state = jax.device_put(state, state_shardings)

  # ---------------------------------------------------------------------------- Checkpoint restore
  manager = ckpt_lib.Manager(workdir, keep=config.checkpoint.keep,
                             every=config.checkpoint.every,
                             async_save=config.checkpoint.async_save, config=config)
  start = manager.latest_step() or 0
  if start:
    abstract = ckpt_lib.abstract_with_shardings(state, state_shardings)
    state = manager.restore(start, abstract, data_iter)
    print(f"resumed from step {start} in {manager.directory}", flush=True)

  # ---------------------------------------------------------------------------- Evaluators
  # name → (evaluator, every): evaluators need the model's prediction functions, which the
  # caller builds (see rew_jax/predict.py); none means train only.
  evaluators_fn = evaluators_fn or config_evaluators(config, workdir)
  evaluators = evaluators_fn(model, mesh) if evaluators_fn else {}
  early = _EarlyStopping(config.get("early_stopping"))

  # ---------------------------------------------------------------------------- Loop
  jitted_step = jax.jit(
      functools.partial(train_step, model=model, tx=tx, schedule=schedule,
                        label_smoothing=config.loss.label_smoothing),
      in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
      out_shardings=(state_shardings, None), donate_argnums=(0,))
  writer = metrics_lib.Writer(workdir, config=config, total_steps=config.total_steps,
                              start_step=start)
  preempted = _Preempted()
  last: dict[str, Any] = {}
  pending, step_fn, stop = [], None, False  # Device metrics of the steps since the last log.
  try:
    with sharding.use(mesh, rules):
      for step in range(start + 1, config.total_steps + 1):
        host = next(data_iter)
        batch = sharding.host_batch_to_global(
            {k: v for k, v in host.items() if np.asarray(v).dtype.kind not in "USO"}, mesh)
        if step_fn is None:  # Compile once, explicitly: its time and FLOPs are reported.
          t0 = time.time()
          step_fn = jitted_step.lower(state, batch).compile()
          cost = step_fn.cost_analysis()
          cost = cost[0] if isinstance(cost, (list, tuple)) else cost
          writer.note_compiled(step, (cost or {}).get("flops"), time.time() - t0)
        state, metrics = step_fn(state, batch)
        # Kept on device and summed on the host at log time: adding them here would
        # dispatch a few tiny computations every step.
        pending.append(metrics)
        if step % config.log_every == 0 or step == config.total_steps:
          fetched = jax.device_get(pending)
          sums = jax.tree.map(lambda *xs: np.sum(xs, axis=0), *fetched)
          n = len(fetched)
          last = {"loss": float(sums["loss"]) / n, "grad_norm": float(sums["grad_norm"]) / n,
                  "lr": float(fetched[-1]["lr"]), **_task_metrics(sums)}
          writer.log_train(step, last, examples=int(sums["examples"]))
          pending = []
        for name, (evaluator, every) in evaluators.items():
          if step % every == 0 or step == config.total_steps:
            results = dict(evaluator.run(state.params, step=step))  # Names carry a prefix.
            writer.log_eval(step, name, results)
            last.update(results)
            stop = early.update(step, results) or stop
        manager.maybe_save(step, state, data_iter)
        if preempted.flag or stop:
          why = "SIGTERM" if preempted.flag else (
              f"early stopping ({early.metric} best {early.best} at step {early.best_step})")
          print(f"{why}: saving step {step} and exiting", flush=True)
          manager.save(step, state, data_iter, force=True)
          break
      else:
        if manager.latest_step() != config.total_steps:
          manager.save(config.total_steps, state, data_iter, force=True)
  finally:
    preempted.restore()
    manager.close()
    writer.close()
  if preempted.flag:
    raise Preempted(f"preempted at step {step}; rerun the same command to resume")
  if early.best_step is not None:
    last["best_step"], last["best_" + early.metric] = early.best_step, early.best
  return {"state": state, "metrics": last, "model": model, "mesh": mesh}


def evaluate(config, workdir: str, step: int | None = None) -> dict[str, float]:
  """Runs `config.evals` on a checkpoint of `workdir` (the latest unless `step`)."""
  mesh = sharding.make_mesh(config.get("mesh"))
  rules = sharding.logical_rules(config.get("sharding_rules"))
  model = registry.MODELS.get(config.model.name)(config.model)
  spec = git_lib.parse_config(config.model)
  variables, shardings = sharding.init_sharded(
      model, jax.random.key(0), *git_lib.dummy_inputs(spec), mesh=mesh, rules=rules)
  source = workdir if step is None else os.path.join(workdir, "checkpoints", str(step))
  params = ckpt_lib.load_params(source, ckpt_lib.abstract_with_shardings(
      variables["params"], shardings["params"]))
  build = config_evaluators(config, workdir)
  if build is None:
    raise config_lib.ConfigError("the config has no `evals` block to evaluate with")
  results = {}
  with sharding.use(mesh, rules):
    for _, (evaluator, _) in build(model, mesh).items():
      results.update(evaluator.run(params, step=step))
  return results


def main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(prog="python -m rew_jax train", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  config_lib.add_config_arguments(parser)
  args, config = config_lib.parse_stage_args(parser, argv)
  # Multi-host: join the job before anything touches the XLA backend (launch/ sets the env).
  distributed.initialize_from_env()
  try:
    train(config, args.workdir)
  except Preempted as e:
    print(e, flush=True)
  return 0
