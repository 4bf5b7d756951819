"""The task mixture: one REW record → one training example of a sampled task.

Tasks (each an image-conditioned prompt → target pair):
  entity     prompt: the record's OVEN-style question, or a generic question ("what is the
             main object?"…) as GER-ALD uses for entity-only data; target: the entity name,
             or its ALD code ids when a codes mapping is configured.
  rationale  prompt: a fixed instruction; target: the curator's visually grounded rationale.
  qa         prompt: one of the record's questions (sampled); target: its answer.
  caption    prompt: a fixed (possibly empty) prompt; target: the original web caption, for
             the WebLI-captions baseline trained from the same records.

Per record, the task is drawn with probability proportional to its weight among the tasks
the record supports (entity needs a usable curation status and an entity; rationale a
non-empty rationale; qa at least one pair; caption a caption). Sampling one task per record
keeps the dataset random-access (exact resume) and gives the configured proportions in
expectation. A record supporting no weighted task yields None (filtered, by design: e.g. an
abstained record in an entity-only recipe).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np

from rew_jax import storage
from rew_jax.config import ConfigDict
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
      # JSON {entity_id: [token ids]} of ALD codes; empty: the target is the entity name.
      codes_path="",
  ))


def load_codes(path: str) -> dict[str, list[int]]:
  """Reads a JSON mapping entity_id → code token ids."""
  try:
    codes = json.loads(storage.read_text(path))
  except (OSError, ValueError) as e:
    raise ConfigError(f"ALD codes file {path!r}: {e}") from None
  if not isinstance(codes, dict):
    raise ConfigError(f"ALD codes file {path!r}: expected a JSON object entity_id → ids")
  return codes


class TaskMixture:
  """Draws a task for a record and builds its example dict (picklable)."""

  def __init__(self, config: ConfigDict | Mapping[str, Any] | None = None,
               codes: Mapping[str, Any] | None = None):
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
    self.prefixes = dict(cfg["prefixes"])
    self.generic_questions = tuple(cfg["generic_questions"])
    self.entity_statuses = frozenset(cfg["entity_statuses"])
    self.rationale_prompt = cfg["rationale_prompt"]
    self.caption_prompt = cfg["caption_prompt"]
    if codes is None and cfg["codes_path"]:
      codes = load_codes(cfg["codes_path"])
    self.codes = dict(codes) if codes is not None else None

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

  @staticmethod
  def _base(record: RewRecord, task: str) -> dict[str, Any]:
    return {"task": task, "task_id": np.int32(TASK_IDS[task]), "image": record.image,
            "image_id": record.image_id, "entity_id": record.entity_id, "split": record.split}

  def example(self, record: RewRecord, task: str, rng: np.random.Generator) -> dict[str, Any]:
    """The example of `task` for `record` (the task must be one the record supports)."""
    ex = self._base(record, task)
    if task == "entity":
      ex["prompt"], ex["target"] = self._question(record, rng), record.entity_name
      if self.codes is not None:
        if record.entity_id not in self.codes:
          raise TaskError(f"record {record.image_id!r}: entity {record.entity_id!r} has no ALD "
                          "code in the configured codes")
        ex["target_ids"] = list(self.codes[record.entity_id])
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
    if self.codes is not None:  # An entity outside the codes is still scored (empty target).
      ex["target_ids"] = list(self.codes.get(record.entity_id, []))
    return ex

  def placeholder(self) -> dict[str, Any]:
    """An example with the same keys as real ones, for skipped records and eval padding."""
    ex = {"task": "entity", "task_id": np.int32(0), "image": b"", "image_id": "",
          "entity_id": "", "split": "", "prompt": "", "target": ""}
    if self.codes is not None:
      ex["target_ids"] = []
    return ex
