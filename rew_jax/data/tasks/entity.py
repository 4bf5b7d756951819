"""The entity task: the record's OVEN-style question → the entity's name or GER-ALD code.

Records without a question get a generic one ("what is the main object?"…), as GER-ALD
uses for entity-only data. The target is the entity name (`target='name'`) or its GER-ALD
code (`target='ald'`: the code's token ids from the KB build's `ald_codes.npz`, named by
`codes_path`). It is also the task evaluation asks, whatever a record's status.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rew_jax import registry
from rew_jax.errors import ConfigError
from rew_jax.data import code_table
from rew_jax.data.tasks import base



@registry.TASKS.register("entity")
class Entity(base.Task):
  """Records with an entity and a status the task trusts."""

  @classmethod
  def default_config(cls):
    return dict(
        super().default_config(),
        generic_questions=base.GENERIC_QUESTIONS,
        # Records whose label the task trusts. `candidate` is un-curated Entity-WebLI.
        statuses=("kept", "corrected", "candidate"),
        target="name",    # 'name': the entity name; 'ald': its GER-ALD code.
        # With 'ald': the KB index's ald_codes.npz (rew_jax/data/code_table.py), local or gs://.
        codes_path="")

  def __init__(self, name: str, config=None, *, codes: code_table.CodeTable | None = None):
    super().__init__(name, config)
    c = self.config
    if c.target not in ("name", "ald"):
      raise ConfigError(f"tasks.{name}.target={c.target!r}: use 'name' or 'ald'")
    if c.target == "ald" and codes is None and not c.codes_path:
      raise ConfigError(f"tasks.{name}.target='ald' needs tasks.{name}.codes_path: the KB "
                        f"index's {code_table.FILE_NAME} (written by the KB build; in the "
                        "recipes, pass `:kb_dir=W/kb`, or `:target=name` to train on names)")
    if c.target == "name" and (codes is not None or c.codes_path):
      raise ConfigError(f"tasks.{name}.codes_path is set but tasks.{name}.target='name': set "
                        "target='ald' to train on the codes, or clear codes_path")
    self.statuses = frozenset(c.statuses)
    self.generic_questions = tuple(c.generic_questions)
    self._codes = codes
    if c.target == "ald" and codes is None:
      self._codes = code_table.load_codes(c.codes_path)  # Fails here, before training.

  # The code table is read again in each Grain worker rather than pickled to it (6M
  # entities: ~100 MB per worker message).
  def __getstate__(self):
    state = dict(self.__dict__)
    if self.config.codes_path:
      state["_codes"] = None
    return state

  @property
  def codes(self) -> code_table.CodeTable | None:
    if self.config.target == "ald" and self._codes is None:
      self._codes = code_table.load_codes(self.config.codes_path)
    return self._codes

  def _code(self, entity_id: str) -> list[int] | None:
    row = int(self.codes.rows_of([entity_id])[0])
    return self.codes.tokens(row) if row >= 0 else None

  def question(self, record, rng: np.random.Generator) -> str:
    if record.question:
      return record.question
    return self.generic_questions[int(rng.integers(len(self.generic_questions)))]

  def eligible(self, record):
    return bool(record.entity_id) and record.curation_status in self.statuses

  def example(self, record, rng) -> dict[str, Any]:
    ex = {"prompt": self.question(record, rng), "target": record.entity_name}
    if self.config.target == "ald":
      code = self._code(record.entity_id)
      if code is None:
        raise base.TaskError(
            f"record {record.image_id!r}: entity {record.entity_id!r} has no ALD code in "
            f"{self.config.codes_path or 'the code table'} (another KB?)")
      ex["target_ids"] = code
    return ex

  def eval_example(self, record, rng) -> dict[str, Any]:
    """Evaluation: any record, whatever its status (nothing dropped); an entity outside
    the codes is still scored (with no code)."""
    ex = {"prompt": self.question(record, rng), "target": record.entity_name}
    if self.config.target == "ald":
      ex["target_ids"] = self._code(record.entity_id) or []
    return ex

  def placeholder(self):
    return {"target_ids": []} if self.config.target == "ald" else {}
