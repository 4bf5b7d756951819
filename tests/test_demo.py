"""The demo end to end in its runlocal form: every stage runs and the report is measured."""

import json
import os

import pytest

from rew_jax import __main__ as cli
from rew_jax import config as config_lib
from rew_jax import demo
from rew_jax import train as train_lib


@pytest.mark.slow
def test_demo_runlocal_end_to_end(tmp_path, capsys):
  workdir = str(tmp_path / "demo")
  assert cli.main(["demo", "--workdir", workdir, "--config", "configs/demo.py:runlocal"]) == 0
  out = capsys.readouterr().out
  assert "# rew_jax demo report" in out
  with open(os.path.join(workdir, "report.json")) as f:
    report = json.load(f)
  curation = report["curation"]
  # The simulated LLM fixes most of what retrieval gets wrong; the top-1 baseline cannot.
  rew, base = curation["rew"]["accuracy_vs_truth"], curation["entity_webli"]["accuracy_vs_truth"]
  assert rew["records_labelled_precision_pct"] > base["records_labelled_precision_pct"]
  assert base["records_pct"] == base["candidates_top1_pct"]
  for name in ("rew", "entity_webli"):
    result = report["results"][name]
    assert "oven_val/entity_seen" in result and result["loss"] > 0
    assert os.path.exists(os.path.join(workdir, f"train_{name}", "eval", "oven_val", "step_3",
                                       "predictions_entity.jsonl"))
  assert os.path.getsize(os.path.join(workdir, "curves.png")) > 1000
  # `eval` of the trained checkpoint with the same evaluators reproduces the in-loop figures.
  config = config_lib.load_config("configs/demo.py:runlocal")
  train_config = config.train
  evals, predict = demo.oven_eval_blocks(config, workdir)
  train_config.evals = config_lib.ConfigDict(evals)
  train_config.predict = config_lib.ConfigDict(predict)
  train_config.input.data_dir = os.path.join(workdir, "records_entity_webli")
  again = train_lib.evaluate(train_config, os.path.join(workdir, "train_entity_webli"))
  for key, value in again.items():
    assert report["results"]["entity_webli"][key] == value, key
  # A second run reuses every finished stage (resume) and reports the same numbers.
  assert cli.main(["demo", "--workdir", workdir, "--config", "configs/demo.py:runlocal"]) == 0
  with open(os.path.join(workdir, "report.json")) as f:
    assert json.load(f)["results"] == report["results"]
