"""The demo end to end in its runlocal form: every stage runs, the report is measured, and a
rerun reuses what the same config made and redoes what another config changes."""

import json
import os

import pytest

from rew_jax import __main__ as cli
from rew_jax import config as config_lib
from rew_jax import workdir as workdir_lib
from rew_jax.evaluators import checkpoint_eval
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
  # Another fine-tuning config redoes the fine-tunings, and only them: no stale figures.
  assert cli.main(argv + ["--config.demo.finetune.total_steps=1"]) == 0
  out = capsys.readouterr().out
  assert "fine-tune rew on OVEN train" in out and "pretrain rew, seed +0 (" not in out
  assert os.path.isdir(os.path.join(workdir, "finetune_rew", "eval", "oven_val", "step_1"))
  assert not os.path.isdir(os.path.join(workdir, "finetune_rew", "eval", "oven_val", "step_2"))
