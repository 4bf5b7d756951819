"""The OVEN evaluator and scorer on the embedded world's real files."""

import json
import os

import numpy as np
import pytest

from rew_jax.data import oven_files
from rew_jax.data import synthetic
from rew_jax.evaluators import mapping as mapping_lib
from rew_jax.evaluators import oven
from rew_jax.evaluators import oven_metric
from rew_jax.stages import eval as eval_stage


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  config = synthetic.default_config()
  config.num_entities = 40
  config.num_web_images = 20
  config.contact_sheet = False
  config.oven = dict(entity_train=4, entity_val=10, entity_test=2, query_train=2, query_val=6,
                     query_test=2)
  root = str(tmp_path_factory.mktemp("world"))
  synthetic.generate(config, root)
  return root


def test_world_references_perfect_and_partial_predictions(world, tmp_path, capsys):
  refs = [os.path.join(world, "oven", f"oven_{t}_val.jsonl") for t in ("entity", "query")]
  rows = oven_files.read_references(refs, required=oven_files.REFERENCE_KEYS)
  assert len(rows) == 16
  perfect = oven_files.write_predictions(
      str(tmp_path / "perfect.jsonl"),
      [{"data_id": r["data_id"], "pred_entity_id": r["entity_id"]} for r in rows])
  assert eval_stage.main(["oven", "--references", *refs, "--predictions", perfect]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["final_score"] == 100.0 and out["strict"]["final_score"] == 100.0
  # Dropping every unseen entity prediction: the official figure cannot be computed for
  # the unseen buckets; the strict one scores them 0.
  seen_only = [r for r in rows if "_seen" in r["data_split"]]
  result = oven_metric.score(rows, [{"data_id": r["data_id"], "pred_entity_id": r["entity_id"]}
                                    for r in seen_only])
  assert result["final_score"] is None
  assert result["strict"]["entity_result"] == {"seen": 100.0, "unseen": 0.0}
  assert result["strict"]["final_score"] == 0.0


def test_evaluator_on_world_images(world, tmp_path):
  refs = [os.path.join(world, "oven", f"oven_{t}_val.jsonl") for t in ("entity", "query")]
  kb_ids = sorted({r["entity_id"] for r in oven_files.read_references(refs)})
  seen_shapes = []

  def predict(params, batch):
    seen_shapes.append(batch["image"].shape)
    return {"rows": np.full(batch["mask"].shape, params, np.int32)}

  evaluator = oven.Evaluator(predict, references=refs, image_dir=os.path.join(world, "images"),
                             mapper=mapping_lib.RowMapper(kb_ids), batch_size=4,
                             workdir=str(tmp_path))
  metrics = dict(evaluator.run(0))
  assert set(seen_shapes) == {(4, 224, 224, 3)}  # Default eval pp; last batch padded.
  out = tmp_path / "eval" / "oven"
  rescored = oven_metric.score_files(refs, [str(out / "predictions_entity.jsonl"),
                                            str(out / "predictions_query.jsonl")])
  assert metrics["oven/final_score"] == rescored["final_score"]
  assert metrics["oven/entity_seen"] == rescored["entity_result"]["seen"]
  assert len((out / "table.tsv").read_text().splitlines()) == 17
