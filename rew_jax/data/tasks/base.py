"""What a training task is: a record → (prompt, target) pair, and its own options.

A task registers itself in its own module of this package, named like the file
(`rew_jax/data/tasks/rationale.py` registers "rationale"; one elsewhere is "module:name"):

    @registry.TASKS.register("rationale")
    class Rationale(base.Task):
      @classmethod
      def default_config(cls):
        return base.Task.default_config() | dict(prompt="why is this the entity?")

      def eligible(self, record):
        return bool(record.rationale)

      def example(self, record, rng):
        return {"prompt": self.config.prompt, "target": record.rationale}

The mixture (rew_jax/data/tasks/__init__.py) adds the task's `prefix` to the prompt, its
`target_len` and the fields every example carries (image, ids, `task_id`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rew_jax import config as config_lib
from rew_jax.errors import UserError
from rew_jax.records import RewRecord

# Generic questions for records without one (GER-ALD's entity-only pretraining).
GENERIC_QUESTIONS = (
    "what is the main object?",
    "what is this?",
    "what is in this image?",
    "what is the subject of this image?",
)


class TaskError(UserError):
  """A record the configured tasks cannot use (e.g. an entity without an ALD code)."""


class Task:
  """Base class of registered tasks.

  Attributes:
    name: the registered name (set by the mixture).
    config: the task's block of `input.tasks`, merged over `default_config()`.
  """

  name: str = ""

  @classmethod
  def default_config(cls) -> dict[str, Any]:
    """Every option of the task with its default (its block of `input.tasks`)."""
    return dict(
        prefix="",      # Prepended to the prompt (e.g. "question: ").
        # The target's own length in ids, EOS included (the `pad` op cuts there and counts
        # it in `target_truncated`); 0: the pp spec's target pad length.
        target_len=0)

  def __init__(self, name: str, config=None):
    self.name = name
    self.config = config_lib.merge(self.default_config(), config, f"tasks.{name}")
    if int(self.config.target_len) < 0:
      raise config_lib.ConfigError(f"tasks.{name}.target_len={self.config.target_len}: "
                                   "lengths are >= 0")

  def eligible(self, record: RewRecord) -> bool:
    """Can `record` serve this task?"""
    raise NotImplementedError

  def example(self, record: RewRecord, rng: np.random.Generator) -> dict[str, Any]:
    """`prompt` and `target` (and any extra fields, e.g. `target_ids`) for an eligible
    record; `rng` draws whatever the task samples (a question, a QA pair)."""
    raise NotImplementedError

  def placeholder(self) -> dict[str, Any]:
    """The extra fields of `example` (beyond prompt and target), empty, for padding."""
    return {}
