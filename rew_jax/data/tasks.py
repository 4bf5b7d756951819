"""The task mixture: one REW record → one training example of a sampled task.

Tasks (each an image-conditioned prompt → target pair):
  entity     prompt: the record's OVEN-style question, or a generic question ("what is the
             main object?"…) as GER-ALD uses for entity-only data; target: the entity name
             (`entity_target='name'`) or its GER-ALD code (`entity_target='ald'`: the code's
             token ids from the KB build's `ald_codes.npz`, named by `codes_path`).
  rationale  prompt: a fixed instruction; target: the curator's visually grounded rationale.
  qa         prompt: one of the record's questions (sampled); target: its answer.
  caption    prompt: a fixed (possibly empty) prompt; target: the original web caption, for
             the WebLI-captions baseline trained from the same records.

Each task has its own target length (`target_len`, ids with EOS): the `pad` op cuts a longer
target there and flags it (`target_truncated`), and the train loop counts the flags per task;
records keep their full texts.

Per record, the task is drawn with probability proportional to its weight among the tasks
the record supports (entity needs a usable curation status and an entity; rationale a
non-empty rationale; qa at least one pair; caption a caption). Sampling one task per record
keeps the dataset random-access (exact resume) and gives the configured proportions in
expectation. A record supporting no weighted task yields None (filtered, by design: e.g. an
abstained record in an entity-only recipe).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from rew_jax.config import ConfigDict
from rew_jax.data import code_table
from rew_jax.errors import ConfigError, UserError
from rew_jax.records import RewRecord

TASKS = ("entity", "rationale", "qa", "caption")
TASK_IDS = {name: i for i, name in enumerate(TASKS)}

# Generic questions for records without one (GER-ALD's entity-only pretraining).
GENERIC_QUESTIONS = (
    "what is the main object?",
    "what is this?",
    "what is in this image?",
    "what is the subject of this image?",
)


class TaskError(UserError):
  """A record the configured tasks cannot use (e.g. an entity without an ALD code)."""


def default_config() -> ConfigDict:
  """The mixture's config block (`config.input.tasks` in training configs)."""
  return ConfigDict(dict(
      # Mixture weights; a task with weight 0 is never drawn.
      weights=dict(entity=1.0, rationale=0.0, qa=0.0, caption=0.0),
      # Prepended to the prompt per task (e.g. qa="question: ").
      prefixes=dict(entity="", rationale="", qa="", caption=""),
      generic_questions=GENERIC_QUESTIONS,
      # Records whose label the entity task trusts. `candidate` is un-curated Entity-WebLI.
      entity_statuses=("kept", "corrected", "candidate"),
      rationale_prompt="why is this the entity?",
      caption_prompt="",
      # Each task's own target length in ids, EOS included (the `pad` op cuts there and
      # counts it in `target_truncated`); 0: the pp spec's target pad length.
      target_len=dict(entity=0, rationale=0, qa=0, caption=0),
      # 'name': the entity task's target is the entity name; 'ald': its GER-ALD code.
      entity_target="name",
      # With 'ald': the KB index's ald_codes.npz (rew_jax/data/code_table.py), local or gs://.
      codes_path="",
  ))


class TaskMixture:
  """Draws a task for a record and builds its example dict (picklable)."""

  def __init__(self, config: ConfigDict | Mapping[str, Any] | None = None,
               codes: code_table.CodeTable | None = None):
    cfg = dict(default_config())
    for key, value in dict(config or {}).items():
      if key not in cfg:
        raise ConfigError(f"unknown tasks config key {key!r}; known: {sorted(cfg)}")
      cfg[key] = value  # Whole replacement: weights={'qa': 1} means the others are 0.
    weights = dict(cfg["weights"])
    unknown = set(weights) - set(TASKS)
    if unknown:
      raise ConfigError(f"unknown tasks {sorted(unknown)} in tasks.weights; known: {list(TASKS)}")
    self.weights = np.array([float(weights.get(t, 0.0)) for t in TASKS])
    if (self.weights < 0).any() or not self.weights.sum():
      raise ConfigError(f"tasks.weights must be >= 0 with a positive sum, got {weights}")
    self.target_len = {t: int(n) for t, n in dict(cfg["target_len"]).items()}
    bad = {t: n for t, n in self.target_len.items() if t not in TASKS or n < 0}
    if bad:
      raise ConfigError(f"tasks.target_len {bad}: lengths are >= 0, per task of {list(TASKS)}")
    self.prefixes = dict(cfg["prefixes"])
    self.generic_questions = tuple(cfg["generic_questions"])
    self.entity_statuses = frozenset(cfg["entity_statuses"])
    self.rationale_prompt = cfg["rationale_prompt"]
    self.caption_prompt = cfg["caption_prompt"]
    self.entity_target = cfg["entity_target"]
    if self.entity_target not in ("name", "ald"):
      raise ConfigError(f"tasks.entity_target={self.entity_target!r}: use 'name' or 'ald'")
    self.codes_path = cfg["codes_path"]
    if self.entity_target == "ald" and codes is None and not self.codes_path:
      raise ConfigError("tasks.entity_target='ald' needs tasks.codes_path: the KB index's "
                        f"{code_table.FILE_NAME} (written by the KB build; in the recipes, "
                        "pass `:kb_dir=W/kb`, or `:target=name` to train on names)")
    if self.entity_target == "name" and (codes is not None or self.codes_path):
      raise ConfigError("tasks.codes_path is set but tasks.entity_target='name': set "
                        "entity_target='ald' to train on the codes, or clear codes_path")
    self._codes = codes
    if self.entity_target == "ald" and codes is None:
      self._codes = code_table.load_codes(self.codes_path)  # Fails here, before training.

  # The code table is read again in each Grain worker rather than pickled to it (6M
  # entities: ~100 MB per worker message).
  def __getstate__(self):
    state = dict(self.__dict__)
    if self.codes_path:
      state["_codes"] = None
    return state

  @property
  def codes(self) -> code_table.CodeTable | None:
    if self.entity_target == "ald" and self._codes is None:
      self._codes = code_table.load_codes(self.codes_path)
    return self._codes

  def _code(self, entity_id: str) -> list[int] | None:
    row = int(self.codes.rows_of([entity_id])[0])
    return self.codes.tokens(row) if row >= 0 else None

  def eligible(self, record: RewRecord) -> np.ndarray:
    """A boolean per task in TASKS: can this record serve it?"""
    return np.array([
        bool(record.entity_id) and record.curation_status in self.entity_statuses,
        bool(record.rationale),
        bool(record.qa),
        bool(record.caption),
    ])

  def probabilities(self, record: RewRecord) -> np.ndarray:
    w = self.weights * self.eligible(record)
    total = w.sum()
    return w / total if total else w

  def __call__(self, record: RewRecord, rng: np.random.Generator) -> dict[str, Any] | None:
    p = self.probabilities(record)
    if not p.any():
      return None
    task = TASKS[int(rng.choice(len(TASKS), p=p))]
    return self.example(record, task, rng)

  def _question(self, record: RewRecord, rng: np.random.Generator) -> str:
    if record.question:
      return record.question
    return self.generic_questions[int(rng.integers(len(self.generic_questions)))]

  def _base(self, record: RewRecord, task: str) -> dict[str, Any]:
    ex = {"task": task, "task_id": np.int32(TASK_IDS[task]), "image": record.image,
          "image_id": record.image_id, "entity_id": record.entity_id, "split": record.split}
    if self.target_len.get(task):  # Read by the `pad` op; `_` keys never reach the batch.
      ex["_target_len"] = self.target_len[task]
    return ex

  def example(self, record: RewRecord, task: str, rng: np.random.Generator) -> dict[str, Any]:
    """The example of `task` for `record` (the task must be one the record supports)."""
    ex = self._base(record, task)
    if task == "entity":
      ex["prompt"], ex["target"] = self._question(record, rng), record.entity_name
      if self.entity_target == "ald":
        code = self._code(record.entity_id)
        if code is None:
          raise TaskError(f"record {record.image_id!r}: entity {record.entity_id!r} has no ALD "
                          f"code in {self.codes_path or 'the code table'} (another KB?)")
        ex["target_ids"] = code
    elif task == "rationale":
      ex["prompt"], ex["target"] = self.rationale_prompt, record.rationale
    elif task == "qa":
      pair = record.qa[int(rng.integers(len(record.qa)))]
      ex["prompt"], ex["target"] = pair.question, pair.answer
    elif task == "caption":
      ex["prompt"], ex["target"] = self.caption_prompt, record.caption
    else:
      raise ConfigError(f"unknown task {task!r}; known: {list(TASKS)}")
    ex["prompt"] = self.prefixes.get(task, "") + ex["prompt"]
    return ex

  def eval_example(self, record: RewRecord, rng: np.random.Generator) -> dict[str, Any]:
    """Evaluation: always the entity task, whatever the record's status (nothing dropped)."""
    ex = self._base(record, "entity")
    ex["prompt"] = self.prefixes.get("entity", "") + self._question(record, rng)
    ex["target"] = record.entity_name
    if self.entity_target == "ald":  # An entity outside the codes is still scored (no code).
      ex["target_ids"] = self._code(record.entity_id) or []
    return ex

  def placeholder(self) -> dict[str, Any]:
    """An example with the same keys as real ones, for skipped records and eval padding."""
    ex = {"task": "entity", "task_id": np.int32(0), "image": b"", "image_id": "",
          "entity_id": "", "split": "", "prompt": "", "target": ""}
    if self.entity_target == "ald":
      ex["target_ids"] = []
    return ex
