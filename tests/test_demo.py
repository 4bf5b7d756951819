"""The demo end to end in its runlocal form: every stage runs, the report is measured, and a
rerun reuses what the same config made and redoes what another config changes."""

import json
import os

import numpy as np
import pytest

from rew_jax import __main__ as cli
from rew_jax import checkpoint
from rew_jax import config as config_lib
from rew_jax import workdir as workdir_lib
from rew_jax.data import vocab
from rew_jax.evaluators import checkpoint_eval
from rew_jax.models import trie
from rew_jax.stages import demo


@pytest.mark.slow
def test_demo_runlocal_end_to_end(tmp_path, capsys):
  workdir = str(tmp_path / "demo")
  argv = ["demo", "--workdir", workdir, "--config", "configs/demo.py:runlocal"]
  assert cli.main(argv) == 0
  out = capsys.readouterr().out
  assert "# rew_jax demo report" in out and "Total demo time" in out
  assert "Chance: 1.7 %" in out  # 60 visual entities.
  with open(os.path.join(workdir, "report.json")) as f:
    report = json.load(f)
  curation = report["curation"]
  base = curation["entity_webli"]["accuracy_vs_truth"]
  assert base["records_pct"] == base["candidates_top1_pct"]  # The baseline is the top-1.
  for name in ("rew", "entity_webli"):
    for phase, run in (("before", "train"), ("after", "finetune")):
      cells = report["results"][name][phase][0]
      seen = cells["entity_seen"]
      assert seen["low"] <= seen["value"] <= seen["high"]  # Every cell carries its interval.
      assert os.path.exists(os.path.join(workdir, f"{run}_{name}", "eval", "oven_val",
                                         f"step_{3 if run == 'train' else 2}",
                                         "predictions_entity.jsonl"))
  assert os.path.getsize(os.path.join(workdir, "curves.png")) > 1000
  # Both models embed and predict the trimmed vocabulary, which holds every KB name's ids.
  kept = np.load(os.path.join(workdir, "vocab", vocab.FILE_NAME))
  names = trie.load(os.path.join(workdir, "kb", "name_trie.npz")).labels
  assert set(np.asarray(names).tolist()) <= set(kept.tolist()) and len(kept) < 2000
  head = checkpoint.load_params(workdir_lib.Workdir(workdir).train_run("rew"))["head"]
  assert head["kernel"].shape[-1] == len(kept)
  # `eval` of a trained checkpoint with the same evaluators reproduces the in-loop figures.
  config = config_lib.load_config("configs/demo.py:runlocal")
  wd = workdir_lib.Workdir(workdir)
  section = demo.train_config(config, wd, "entity_webli")
  again = checkpoint_eval.evaluate(section, wd.train_run("entity_webli"))
  with open(os.path.join(wd.train_run("entity_webli"), demo.RESULT_NAME)) as f:
    in_loop = json.load(f)
  for key, value in again.items():
    assert in_loop[key] == value, key
  # A second run reuses every finished stage and reports the same numbers.
  assert cli.main(argv) == 0
  out = capsys.readouterr().out
  assert out.count("reusing") >= 6  # world, candidates, 2 pretrainings, 2 fine-tunings.
  with open(os.path.join(workdir, "report.json")) as f:
    assert json.load(f)["results"] == report["results"]


def test_a_changed_config_retrains_and_never_reports_old_figures(tmp_path, monkeypatch):
  """train_one reuses a run only when the same config and inputs made it; another config
  starts the run over (the real training is the end-to-end test's)."""
  calls = []

  def fake_train(config, directory):
    calls.append(config.total_steps)
    step_dir = os.path.join(directory, "eval", "oven_val", f"step_{config.total_steps}")
    os.makedirs(step_dir)
    with open(os.path.join(step_dir, "metrics.json"), "w") as f:
      json.dump({"counts": {"entity_val_seen": {"references": 10}},
                 "entity_result": {"seen": 10.0 * config.total_steps}}, f)
    return {"metrics": {"loss": 1.0}}

  monkeypatch.setattr(demo.train_lib, "train", fake_train)
  progress = demo.base.Progress()
  config = config_lib.ConfigDict(dict(total_steps=3, input=dict(data_dir="r")))
  run = str(tmp_path / "run")
  first = demo.train_one(config, run, "inputs-1", progress, "t")
  assert demo.train_one(config, run, "inputs-1", progress, "t") == first and calls == [3]
  config.total_steps = 4
  again = demo.train_one(config, run, "inputs-1", progress, "t")
  assert calls == [3, 4] and again["entity_seen"].value == 40.0
  assert not os.path.isdir(os.path.join(run, "eval", "oven_val", "step_3"))  # Not mixed.
  demo.train_one(config, run, "inputs-2", progress, "t")  # New records: retrained too.
  assert calls == [3, 4, 4]


def test_the_ablations_curate_and_train_the_arms_they_name():
  """table4: one record set per curation variant, entity-only models, compared with direct
  annotation; table5: one record set, the tasks differ; arms that curate one set two ways
  are refused."""
  t4 = config_lib.load_config("configs/demo.py:ablation=table4")
  assert demo.record_sets(t4) == {
      "direct": ("simulated", "direct", ""), "no_context": ("simulated", "one_call", "none"),
      "rew": ("simulated", "one_call", "full"), "separate": ("simulated", "multi_call", "full")}
  assert list(demo.arms(t4)) == ["direct", "no_context", "context", "separate"]
  assert t4.demo.reference == "direct" and t4.demo.finetune.total_steps == 0
  wd = workdir_lib.Workdir("/w")
  for name in demo.arms(t4):
    c = demo.train_config(t4, wd, name)
    assert dict(c.input.tasks.weights) == dict(entity=1.0, rationale=0.0, qa=0.0, caption=0.0)
  assert demo.train_config(t4, wd, "context").input.data_dir == wd.records("rew")
  t5 = config_lib.load_config("configs/demo.py:ablation=table5,finetune_steps=50")
  assert list(demo.record_sets(t5)) == ["rew"] and t5.demo.finetune.total_steps == 50
  weights = [dict(demo.train_config(t5, wd, n).input.tasks.weights) for n in demo.arms(t5)]
  assert [sorted(t for t, w in ws.items() if w) for ws in weights] == [
      ["entity"], ["entity", "rationale"], ["entity", "qa", "rationale"]]
  main = config_lib.load_config("configs/demo.py")
  assert main.demo.reference == "entity_webli" and main.demo.finetune.total_steps == 100
  t5.demo.arms.entity.mode = "direct"  # "rew" curated two ways.
  with pytest.raises(demo.ConfigError, match="give it its own `records` name"):
    demo.record_sets(t5)
  t5.demo.reference = "nope"
  with pytest.raises(demo.ConfigError, match="demo.reference 'nope'"):
    demo.arms(t5)


@pytest.mark.slow
def test_table4_runlocal_curates_each_variant_and_compares_with_direct(tmp_path, capsys):
  workdir = str(tmp_path / "t4")
  assert cli.main(["demo", "--workdir", workdir, "--config",
                   "configs/demo.py:ablation=table4,runlocal"]) == 0
  out = capsys.readouterr().out
  assert "Paired differences from direct" in out
  with open(os.path.join(workdir, "report.json")) as f:
    report = json.load(f)
  assert list(report["curation"]) == ["direct", "no_context", "rew", "separate"]
  assert [report["curation"][r]["mode"] for r in report["curation"]] == [
      "direct", "one_call", "one_call", "multi_call"]
  assert report["curation"]["no_context"]["context"] == "none"
  assert set(report["differences_hm"]) == {"no_context", "context", "separate"}
  for name, by_task in report["differences_hm"].items():
    [d] = by_task["entity"]["before"]
    assert d["low"] <= d["value"] <= d["high"] and "after" not in by_task["entity"], name
  for name in ("direct", "no_context", "context", "separate"):
    assert list(report["results"][name]["before"]) and not report["results"][name]["after"]
  # Each variant's records carry what its audit counts.
  for rep in report["curation"].values():
    modes = rep["accuracy_vs_truth"]["failure_modes_pct"]["records"]
    assert set(modes) == {"abstained", "generic", "lookalike", "concept", "hallucinated"}
    assert sum(modes.values()) == pytest.approx(100 - rep["accuracy_vs_truth"]["records_pct"],
                                                abs=0.05)
