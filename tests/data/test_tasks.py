"""Task mixture: eligibility, examples per task, the mixture's proportions, its config's
merge rule, and a task added as one module."""

import pickle

import numpy as np
import pytest

from rew_jax.data import code_table
from rew_jax.data import tasks
from rew_jax.errors import ConfigError
from rew_jax.records import RewRecord


def record(**kw):
  fields = dict(image_id="web_1", image=b"\xff\xd8jpeg", caption="my trip to paris",
                entity_id="Q243", entity_name="Eiffel Tower", curation_status="kept",
                rationale="a wrought-iron lattice tower", split="",
                qa=[{"question": "what is it made of?", "answer": "iron"},
                    {"question": "how tall is it?", "answer": "330 m"}])
  fields.update(kw)
  return RewRecord(**fields)


ALL = dict(entity=1.0, rationale=1.0, qa=1.0, caption=1.0)


def test_examples_per_task():
  mix = tasks.TaskMixture({"weights": ALL, "qa": {"prefix": "question: "},
                           "entity": {"generic_questions": ("what is this?",)}})
  rng = np.random.default_rng(0)
  r = record()
  ex = mix.example(r, "entity", rng)
  assert (ex["prompt"], ex["target"], ex["task_id"]) == ("what is this?", "Eiffel Tower", 0)
  assert ex["image"] == r.image and ex["image_id"] == "web_1" and ex["entity_id"] == "Q243"
  ex = mix.example(record(question="which tower is this?"), "entity", rng)
  assert ex["prompt"] == "which tower is this?"
  ex = mix.example(r, "rationale", rng)
  assert (ex["prompt"], ex["target"]) == ("why is this the entity?", "a wrought-iron lattice tower")
  qas = {(e["prompt"], e["target"]) for e in (mix.example(r, "qa", rng) for _ in range(50))}
  assert qas == {("question: what is it made of?", "iron"), ("question: how tall is it?", "330 m")}
  ex = mix.example(r, "caption", rng)
  assert (ex["prompt"], ex["target"], ex["task_id"]) == ("", "my trip to paris", 3)


def test_eligibility():
  mix = tasks.TaskMixture({"weights": ALL})
  assert mix.eligible(record()).tolist() == [True, True, True, True]
  assert mix.eligible(record(rationale="", qa=(), caption="")).tolist() == [True, False, False, False]
  # Abstained / unresolved records never teach an entity; un-curated candidates do by default.
  assert not mix.eligible(record(curation_status="abstained"))[0]
  assert not mix.eligible(record(curation_status="unresolved"))[0]
  assert mix.eligible(record(curation_status="candidate"))[0]
  assert not mix.eligible(record(entity_id=""))[0]
  entity_only = tasks.TaskMixture()
  rng = np.random.default_rng(0)
  assert entity_only(record(curation_status="abstained"), rng) is None
  assert entity_only(record(), rng)["task"] == "entity"


def test_mixture_proportions():
  weights = dict(entity=4.0, rationale=2.0, qa=1.0, caption=1.0)
  mix = tasks.TaskMixture({"weights": weights})
  rng = np.random.default_rng(1)
  n = 8000
  counts = {t: 0 for t in tasks.BUILTIN}
  for _ in range(n):
    counts[mix(record(), rng)["task"]] += 1
  expected = {t: w / 8 for t, w in weights.items()}
  for t in tasks.BUILTIN:
    assert abs(counts[t] / n - expected[t]) < 0.02, (t, counts)
  # A record without a rationale renormalises over what it supports: 4:1:1.
  counts = {t: 0 for t in tasks.BUILTIN}
  for _ in range(6000):
    counts[mix(record(rationale=""), rng)["task"]] += 1
  assert counts["rationale"] == 0
  assert abs(counts["entity"] / 6000 - 4 / 6) < 0.02


def test_codes_eval_placeholder(tmp_path):
  path = str(tmp_path / "ald_codes.npz")
  codes = np.array([[2000, 102, 0, 0], [3000, 4000, 5000, 102]], np.int32)
  code_table.save_codes(path, ["Q1", "Q243"], codes, length=3, seed=0)
  mix = tasks.TaskMixture({"entity": {"target": "ald", "codes_path": path}})
  rng = np.random.default_rng(0)
  ex = mix(record(), rng)
  assert ex["target_ids"] == [3000, 4000, 5000] and ex["target"] == "Eiffel Tower"
  assert mix(record(entity_id="Q1"), rng)["target_ids"] == [2000]
  with pytest.raises(tasks.TaskError, match="record 'web_1': entity 'Q9' has no ALD code"):
    mix(record(entity_id="Q9"), rng)
  ev = mix.eval_example(record(entity_id="Q9", curation_status="unresolved",
                               split="entity_val_unseen"), rng)
  assert ev["target_ids"] == [] and ev["split"] == "entity_val_unseen" and ev["task"] == "entity"
  assert set(mix.placeholder()) == set(ex)
  assert set(tasks.TaskMixture().placeholder()) == set(tasks.TaskMixture()(record(), rng))
  again = pickle.loads(pickle.dumps(mix))  # Re-reads the file rather than carrying the table.
  assert again.tasks["entity"]._codes is None
  assert again(record(), rng)["target_ids"] == [3000, 4000, 5000]


def test_each_task_has_its_own_target_length():
  mix = tasks.TaskMixture({"weights": ALL, "rationale": {"target_len": 64},
                           "entity": {"target_len": 8}})
  rng = np.random.default_rng(0)
  assert mix.example(record(), "rationale", rng)["_target_len"] == 64
  assert mix.example(record(), "entity", rng)["_target_len"] == 8
  assert "_target_len" not in mix.example(record(), "qa", rng)  # 0: the pp's pad length.
  assert mix.eval_example(record(), rng)["_target_len"] == 8
  with pytest.raises(ConfigError, match="tasks.qa.target_len=-1"):
    tasks.TaskMixture({"qa": {"target_len": -1}})


def test_config_errors():
  with pytest.raises(ConfigError, match="unknown config key tasks.weights.vqa; closest valid "
                                        "keys: qa"):
    tasks.TaskMixture({"weights": {"vqa": 1.0}})
  with pytest.raises(ConfigError, match="positive sum"):
    tasks.TaskMixture({"weights": {"entity": 0.0}})
  with pytest.raises(ConfigError, match="unknown config key tasks.weight; closest valid keys: "
                                        "weights"):
    tasks.TaskMixture({"weight": {"entity": 1.0}})
  with pytest.raises(ConfigError, match="unknown config key tasks.rationale.promt"):
    tasks.TaskMixture({"rationale": {"promt": "why?"}})
  with pytest.raises(code_table.CodesError, match="ALD codes file '/nonexistent/c.npz' does not"):
    tasks.TaskMixture({"entity": {"target": "ald", "codes_path": "/nonexistent/c.npz"}})
  with pytest.raises(ConfigError, match="tasks.entity.target='ald' needs tasks.entity.codes_path"):
    tasks.TaskMixture({"entity": {"target": "ald"}})
  with pytest.raises(ConfigError, match="codes_path is set but tasks.entity.target='name'"):
    tasks.TaskMixture({"entity": {"codes_path": "/x/ald_codes.npz"}})
  with pytest.raises(ConfigError, match="target='code'"):
    tasks.TaskMixture({"entity": {"target": "code"}})
  cfg = tasks.default_config()
  cfg.weights.qa = 0.5
  assert tasks.TaskMixture(cfg).weights.tolist() == [1.0, 0.0, 0.5, 0.0]


def test_a_partial_weights_block_keeps_the_other_defaults():
  """One merge rule: naming one task's weight never zeroes the others."""
  assert tasks.TaskMixture({"weights": {"qa": 1.0}}).weights.tolist() == [1.0, 0.0, 1.0, 0.0]
  only_qa = tasks.TaskMixture({"weights": {"entity": 0.0, "qa": 1.0}})
  assert only_qa.weights.tolist() == [0.0, 0.0, 1.0, 0.0]
  assert only_qa(record(), np.random.default_rng(0))["task"] == "qa"


NEW_TASK = """
from rew_jax import registry
from rew_jax.data.tasks import base


@registry.TASKS.register("split_name")
class SplitName(base.Task):
  @classmethod
  def default_config(cls):
    return dict(super().default_config(), prompt="which split?")

  def eligible(self, record):
    return bool(record.split)

  def example(self, record, rng):
    return {"prompt": self.config.prompt, "target": record.split}
"""


def test_a_new_task_is_one_module(tmp_path, monkeypatch):
  """A task module registers itself; the mixture's schema, ids and examples then include
  it, after the paper's four, with nothing edited elsewhere."""
  (tmp_path / "my_split_task.py").write_text(NEW_TASK)
  monkeypatch.syspath_prepend(str(tmp_path))
  from rew_jax import registry  # pylint: disable=g-import-not-at-top
  registry.TASKS.get("my_split_task:split_name")  # Imports the module, which registers it.
  try:
    assert tasks.names() == tasks.BUILTIN + ("split_name",)
    assert tasks.default_config().split_name.to_dict() == dict(
        prefix="", target_len=0, prompt="which split?")
    mix = tasks.TaskMixture({"weights": {"entity": 0.0, "split_name": 1.0},
                             "split_name": {"prefix": "q: "}})
    ex = mix(record(split="entity_val"), np.random.default_rng(0))
    assert (ex["task"], ex["task_id"], ex["prompt"], ex["target"]) == (
        "split_name", 4, "q: which split?", "entity_val")
    assert mix(record(split=""), np.random.default_rng(0)) is None
  finally:
    registry.TASKS._items.pop("split_name")  # pylint: disable=protected-access
