"""`rew_jax.evaluators` names its public surface, imported on first use: importing the
package pulls in neither tensorflow_datasets nor JAX, and the names are the modules' own."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_import_is_light_and_names_resolve_lazily():
  code = ("import sys, rew_jax.evaluators as e; heavy = {'tensorflow_datasets', 'jax'} & "
          "set(sys.modules); e.score_files; e.OvenEvaluator; e.ZeroshotEvaluator; "
          "print(sorted(heavy), 'tensorflow_datasets' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       check=True, env=dict(os.environ, PYTHONPATH=REPO))
  assert out.stdout.split() == ["[]", "False"]


def test_the_names_are_the_modules_own():
  from rew_jax import evaluators
  from rew_jax.data import pipeline
  from rew_jax.evaluators import common, knn_matching, oven, oven_metric, zeroshot
  from rew_jax.registry import EVALUATORS
  assert evaluators.OvenEvaluator is oven.Evaluator is EVALUATORS.get("oven")
  assert evaluators.ZeroshotEvaluator is zeroshot.Evaluator is EVALUATORS.get("zeroshot")
  assert evaluators.KnnMatchingEvaluator is knn_matching.Evaluator
  assert evaluators.score_files is oven_metric.score_files
  assert evaluators.from_config is common.from_config
  assert evaluators.eval_input is pipeline.eval_input
  assert set(evaluators.__all__) <= set(dir(evaluators))
  with pytest.raises(AttributeError, match="no attribute 'nope'"):
    evaluators.nope  # pylint: disable=pointless-statement


def test_score_an_oven_predictions_file(tmp_path, monkeypatch):
  """The snippet of docs/python_api.md, as it stands there."""
  monkeypatch.chdir(tmp_path)
  # --- snippet ---
  import json
  from rew_jax import evaluators

  truth = [("Q1", "Azure Heron", "entity_val_seen"), ("Q2", "Golden Falcon", "entity_val_seen"),
           ("Q3", "Violet Sparrow", "entity_val_unseen")]
  refs = [{"data_id": f"oven_entity_val_{i}", "image_id": f"oven_{i:08d}",
           "question": "what is this?", "entity_id": qid, "entity_text": name,
           "data_split": split} for i, (qid, name, split) in enumerate(truth)]
  preds = [{"data_id": f"oven_entity_val_{i}", "pred_entity_id": qid}
           for i, qid in enumerate(["Q1", "Q3", "Q3"])]
  for path, rows in (("oven_entity_val.jsonl", refs), ("pred_entity.jsonl", preds)):
    with open(path, "w", encoding="utf-8") as f:
      f.writelines(json.dumps(row) + "\n" for row in rows)
  result = evaluators.score_files(["oven_entity_val.jsonl"], ["pred_entity.jsonl"])
  print(result["entity_result"], result["entity_score"])  # {'seen': 50.0, 'unseen': 100.0} 66.67
  # --- end ---
  assert result["entity_result"] == {"seen": 50.0, "unseen": 100.0}
  assert result["entity_score"] == 66.67 and result["final_score"] is None
