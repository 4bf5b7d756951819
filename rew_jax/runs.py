"""A trained run, loaded from Python: its saved config, model, mesh, parameters, prediction
functions and pp specs.

    import rew_jax
    run = rew_jax.load_run("runs/demo/train_rew")            # the latest step
    run = rew_jax.load_run(workdir, step="best")             # early_stopping.metric's best
    batch = run.batch([{"image": jpeg_bytes, "prompt": "what is this?"}], pp=run.pp["oven_val"])
    out = run.predict("decode_rows", batch)                   # {"rows": [B, R], "scores": ...}
    metrics = run.evaluate()                                  # the config's evaluators

The config is the one saved with the checkpoint (rew_jax/checkpoint.py), so a run loads
the same whatever its config file says now; the parameters are read straight onto the
shardings the run was trained with, on this machine's devices. `eval --workdir W` evaluates
through the same function, so both predict the same numbers.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from rew_jax import checkpoint
from rew_jax import config as config_lib
from rew_jax import model_setup
from rew_jax import sharding
from rew_jax import train as train_lib
from rew_jax.data import ops as ops_lib
from rew_jax.evaluators import checkpoint_eval
from rew_jax.errors import ConfigError, UserError

ConfigDict = config_lib.ConfigDict


@dataclasses.dataclass
class Run:
  """A loaded run.

  Attributes:
    workdir: the run's directory.
    step: the checkpoint step loaded.
    config: the train section it was trained with (saved with the checkpoint, defaults
      filled in).
    setup: mesh, logical rules, the registered model and parameter shardings
      (`model_setup.ModelSetup`; `setup.params` is None, the parameters are `params`).
    params: the parameters, on their shardings.
    predict_fns: name → jitted prediction function over `params`, configured by the
      config's `predict` block.
    pp: the pp specs of the run: "train" (input.pp) and one per evaluator with a `pp`.
  """

  workdir: str
  step: int
  config: ConfigDict
  setup: model_setup.ModelSetup
  params: Any
  predict_fns: Mapping[str, Callable]
  pp: Mapping[str, str]

  @property
  def model(self):
    return self.setup.model

  @property
  def mesh(self) -> jax.sharding.Mesh:
    return self.setup.mesh

  def batch(self, examples: Sequence[Mapping[str, Any]], pp: str) -> dict[str, np.ndarray]:
    """Examples (e.g. {"image": encoded bytes, "prompt": str}) through the pp spec `pp`,
    stacked into one batch with `mask` 1 (strings dropped)."""
    if not examples:
      raise ValueError("batch() needs at least one example")
    preprocess = ops_lib.get_preprocess(pp)
    done = [preprocess(dict(ex)) for ex in examples]
    keys = [k for k, v in done[0].items()
            if not k.startswith("_") and np.asarray(v).dtype.kind not in "USO"]
    out = {k: np.stack([np.asarray(ex[k]) for ex in done]) for k in keys}
    out["mask"] = np.ones(len(done), np.int32)
    return out

  def evaluate(self) -> dict[str, float]:
    """Runs every evaluator of the config's `evals` (also those with every=0) on this
    step, as `python -m rew_jax eval` does; files go to W/eval/<name>/step_<step>/."""
    return checkpoint_eval.evaluate_params(self.config, self.setup, self.params, self.workdir,
                                           self.step)

  def predict(self, name: str, batch: Mapping[str, Any], **kwargs) -> dict[str, np.ndarray]:
    """`predict_fns[name]` on `batch` under the run's mesh and rules; host numpy out."""
    if name not in self.predict_fns:
      raise ConfigError(f"{name!r} is not a prediction function of this run's model; known: "
                        f"{', '.join(sorted(self.predict_fns)) or '(none)'}")
    with sharding.use(self.setup.mesh, self.setup.rules):
      out = self.predict_fns[name](self.params, dict(batch), **kwargs)
    return {k: np.asarray(v) for k, v in jax.device_get(out).items()}


def resolve_step(workdir: str, step: int | str | None, config=None) -> int:
  """None (the latest), a step number, or "best" (the step with the best
  early_stopping.metric of `config`, by default the latest checkpoint's saved config)."""
  if step is None or (isinstance(step, str) and step.isdigit()):
    if step is not None:
      return int(step)
    latest = checkpoint.latest_step(workdir)
    if latest is None:
      raise UserError(f"{workdir}: no checkpoint to load")
    return latest
  if isinstance(step, int):
    return step
  if step != "best":
    raise ConfigError(f"step {step!r}: a step number, 'best' or None (the latest)")
  if config is None:
    config = train_lib.with_defaults(checkpoint.saved_config(
        workdir, resolve_step(workdir, None)))
  metric = config.early_stopping.metric
  if not metric:
    raise ConfigError("step 'best' needs early_stopping.metric in the train config")
  return checkpoint.best_step(workdir, metric, config.early_stopping.mode)


def run_config(workdir: str, step: int, config=None) -> ConfigDict:
  """The train section to use for `workdir`'s checkpoint `step`: the saved one, or `config`
  (defaults filled in) when given, which must describe the same model: a model section
  that differs from the saved one is refused, naming the keys."""
  saved = train_lib.with_defaults(checkpoint.saved_config(workdir, step))
  if config is None:
    return saved
  config = train_lib.with_defaults(config)
  old, new = _leaves(saved.model.to_dict()), _leaves(config.model.to_dict())
  differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
  if differ:
    raise ConfigError(
        f"{checkpoint.step_dir(workdir, step)} was trained with another model section "
        f"(differs in: {', '.join('model.' + k for k in differ[:8])}"
        f"{' ...' if len(differ) > 8 else ''}); leave --config out to use the saved config")
  return config


def _leaves(tree, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_leaves(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
  return out


def pp_specs(config) -> dict[str, str]:
  """"train" (input.pp) and each evaluator block's `pp`, by the block's name."""
  out = {"train": config.input.pp}
  for name, block in dict(config.get("evals") or {}).items():
    if "pp" in block:
      out[name] = block["pp"]
  return out


def load_run(workdir: str, step: int | str | None = None, *, config=None) -> Run:
  """Loads `workdir`'s checkpoint `step` (None: the latest; "best": the step with the best
  early_stopping.metric) with the config saved beside it (or `config`, a train section
  for the same model, e.g. with other evaluators)."""
  step = resolve_step(workdir, step, None if config is None else train_lib.with_defaults(config))
  config = run_config(workdir, step, config)
  setup = model_setup.setup_model(config, init=False)
  params = checkpoint.load_params(checkpoint.step_dir(workdir, step), setup.abstract_params)
  return Run(workdir=workdir, step=step, config=config, setup=setup, params=params,
             predict_fns=setup.model.predict_fns(config.get("predict")), pp=pp_specs(config))
