"""The task mixture: one REW record → one training example of a sampled task.

Tasks are components (`registry.TASKS`), one module each in this package: `entity` (the
question → the entity name or ALD code), `rationale` (an instruction → the curator's
rationale), `qa` (a question → its answer), `caption` (→ the web caption, for the
WebLI-captions baseline). A new task is one new file (rew_jax/data/tasks/base.py shows one).

The `input.tasks` block is `weights` (task → mixture weight, every registered task, in
task-id order: the four above first, then the others by name) and one block of options per
task (its `default_config()`: `prefix`, `target_len` and its own):

    tasks = dict(weights=dict(entity=1.0, rationale=0.5), rationale=dict(prefix="why: "))

It is merged over `default_config()` (rew_jax.config.merge): a task the block leaves out
keeps its default weight (entity 1, the others 0), so `weights={'qa': 1.0}` trains entity
and QA; `weights={'entity': 0.0, 'qa': 1.0}` trains QA only.

Per record, the task is drawn with probability proportional to its weight among the tasks
the record supports. Sampling one task per record keeps the dataset random-access (exact
resume) and gives the configured proportions in expectation. A record supporting no
weighted task yields None (filtered, by design: e.g. an abstained record in an entity-only
recipe). Each task has its own target length (`target_len`, ids with EOS): the `pad` op
cuts a longer target there and flags it (`target_truncated`), and the train loop counts the
flags per task; records keep their full texts.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from rew_jax import config as config_lib
from rew_jax import registry
from rew_jax.data import code_table
from rew_jax.data.tasks.base import GENERIC_QUESTIONS, Task, TaskError
from rew_jax.errors import ConfigError
from rew_jax.records import RewRecord

ConfigDict = config_lib.ConfigDict
# The paper's tasks come first in task-id order; tasks registered beside them follow.
BUILTIN = ("entity", "rationale", "qa", "caption")
EVAL_TASK = "entity"

__all__ = ["BUILTIN", "GENERIC_QUESTIONS", "Task", "TaskError", "TaskMixture",
           "default_config", "names"]


def names() -> tuple[str, ...]:
  """Every registered task, in task-id order."""
  known = registry.TASKS.names()
  return BUILTIN + tuple(n for n in known if n not in BUILTIN)


def default_config() -> ConfigDict:
  """The mixture's block (`config.input.tasks` in training configs): weights, then one
  block of options per registered task."""
  tasks = names()
  c = {"weights": {n: 1.0 if n == EVAL_TASK else 0.0 for n in tasks}}
  for n in tasks:
    c[n] = registry.TASKS.get(n).default_config()
  return ConfigDict(c)


class TaskMixture:
  """Draws a task for a record and builds its example dict (picklable).

  Attributes:
    names: the tasks in task-id order (`task_id` k is names[k]).
    weights: float [len(names)] mixture weights.
    tasks: name → the Task built from its block.
  """

  def __init__(self, config: ConfigDict | Mapping[str, Any] | None = None,
               codes: code_table.CodeTable | None = None):
    cfg = config_lib.merge(default_config(), config, "tasks")
    self.names = tuple(n for n in names() if n in cfg.weights)  # ConfigDicts sort keys.
    self.weights = np.array([float(cfg.weights[n]) for n in self.names])
    if (self.weights < 0).any() or not self.weights.sum():
      raise ConfigError(f"tasks.weights must be >= 0 with a positive sum, got "
                        f"{cfg.weights.to_dict()}")
    self.tasks: dict[str, Task] = {}
    for n in self.names:
      cls = registry.TASKS.get(n)
      extra = {"codes": codes} if n == EVAL_TASK else {}
      self.tasks[n] = cls(n, cfg[n], **extra)

  @property
  def ids(self) -> dict[str, int]:
    return {n: k for k, n in enumerate(self.names)}

  def eligible(self, record: RewRecord) -> np.ndarray:
    """A boolean per task in `names`: can this record serve it?"""
    return np.array([self.tasks[n].eligible(record) for n in self.names])

  def probabilities(self, record: RewRecord) -> np.ndarray:
    w = self.weights * self.eligible(record)
    total = w.sum()
    return w / total if total else w

  def __call__(self, record: RewRecord, rng: np.random.Generator) -> dict[str, Any] | None:
    p = self.probabilities(record)
    if not p.any():
      return None
    task = self.names[int(rng.choice(len(self.names), p=p))]
    return self.example(record, task, rng)

  def _finish(self, record: RewRecord, task: str, fields: dict[str, Any]) -> dict[str, Any]:
    t = self.tasks[task]
    ex = {"task": task, "task_id": np.int32(self.ids[task]), "image": record.image,
          "image_id": record.image_id, "entity_id": record.entity_id, "split": record.split,
          **fields}
    ex["prompt"] = t.config.prefix + ex["prompt"]
    if t.config.target_len:  # Read by the `pad` op; `_` keys never reach the batch.
      ex["_target_len"] = int(t.config.target_len)
    return ex

  def example(self, record: RewRecord, task: str, rng: np.random.Generator) -> dict[str, Any]:
    """The example of `task` for `record` (the task must be one the record supports)."""
    if task not in self.tasks:
      raise ConfigError(f"unknown task {task!r}; known: {list(self.names)}")
    return self._finish(record, task, self.tasks[task].example(record, rng))

  def eval_example(self, record: RewRecord, rng: np.random.Generator) -> dict[str, Any]:
    """Evaluation: always the entity task, whatever the record's status (nothing dropped)."""
    return self._finish(record, EVAL_TASK, self.tasks[EVAL_TASK].eval_example(record, rng))

  def placeholder(self) -> dict[str, Any]:
    """An example with the same keys as real ones, for skipped records and eval padding."""
    return {"task": EVAL_TASK, "task_id": np.int32(self.ids[EVAL_TASK]), "image": b"",
            "image_id": "", "entity_id": "", "split": "", "prompt": "", "target": "",
            **self.tasks[EVAL_TASK].placeholder()}
