"""OVEN scoring against hand-computed values of the official evaluator's conventions."""

import json
import subprocess
import sys

import pytest

from rew_jax.data import oven_files
from rew_jax.evaluators import oven_metric as om
from rew_jax.stages import eval as eval_stage


def _refs(task, split, n, start=0):
  """n references of one bucket; reference i has entity Q{i}."""
  return [{"data_id": f"{task}_{split}_{start + i}", "image_id": f"oven_{start + i:08d}",
           "question": "what is this?", "entity_id": f"Q{i + 1}", "entity_text": f"E{i}",
           "data_split": f"{task}_val_{split}"} for i in range(n)]


def _preds(refs, correct, count=None):
  """Predictions for the first `count` refs, the first `correct` of them right."""
  count = len(refs) if count is None else count
  return [{"data_id": r["data_id"], "pred_entity_id": r["entity_id"] if i < correct else "Q0"}
          for i, r in enumerate(refs[:count])]


def test_accuracy_rounds_like_the_official_expression():
  assert om.accuracy(2, 3) == 66.67
  assert om.accuracy(1, 3) == 33.33
  # correct / n * 100 (official order) is 14.374999.. in binary → 14.37; 100 * 23 / 160
  # would be exactly 14.375 → 14.38. Only the official order is right.
  assert om.accuracy(23, 160) == 14.37


def test_harmonic_mean_and_zero_bucket():
  assert om.harmonic_mean(66.67, 25.0) == pytest.approx(36.364132213374056, abs=1e-12)
  assert om.harmonic_mean(0.0, 50.0) == pytest.approx(2e-12, rel=1e-6)  # 0 → 1e-12.
  assert om.harmonic_mean(40.0, 40.0) == 40.0


def test_published_blip2_numbers():
  # The official README: query 24.63 / 17.68 → 20.58, entity 8.55 / 3.4 → 4.87, final 7.87.
  counts = {"query_val_seen": [2463, 10000], "query_val_unseen": [1768, 10000],
            "entity_val_seen": [855, 10000], "entity_val_unseen": [340, 10000]}
  out = om.scores_from_counts(counts)
  assert out["query_result"] == {"seen": 24.63, "unseen": 17.68}
  assert out["entity_result"] == {"seen": 8.55, "unseen": 3.4}
  assert (out["query_score"], out["entity_score"], out["final_score"]) == (20.58, 4.87, 7.87)


def test_final_uses_unrounded_task_scores():
  # 7 examples per bucket: query 1/7, 1/7 → 14.29; entity 3/7, 4/7 → HM 48.980408.
  # HM(14.29, 48.980408) = 22.125.. → 22.13; rounding the task scores first would give 22.12.
  counts = {"query_val_seen": [1, 7], "query_val_unseen": [1, 7],
            "entity_val_seen": [3, 7], "entity_val_unseen": [4, 7]}
  out = om.scores_from_counts(counts)
  assert out["entity_score"] == 48.98 and out["query_score"] == 14.29
  assert out["final_score"] == 22.13


def test_score_seen_unseen_missing_and_strict():
  es, eu = _refs("entity", "seen", 4), _refs("entity", "unseen", 4, start=10)
  qs, qu = _refs("query", "seen", 2, start=20), _refs("query", "unseen", 2, start=30)
  refs = es + eu + qs + qu
  # entity seen: 3 of 4 predicted, 2 right → official 66.67, strict 50.0.
  # entity unseen: 4 predicted, 1 right → 25.0 both. query seen 0/2 (zero bucket), unseen 1/2.
  preds = _preds(es, 2, count=3) + _preds(eu, 1) + _preds(qs, 0) + _preds(qu, 1)
  out = om.score(refs, preds)
  assert out["entity_result"] == {"seen": 66.67, "unseen": 25.0}
  assert out["entity_score"] == 36.36
  assert out["query_result"] == {"seen": 0.0, "unseen": 50.0}
  assert out["query_score"] == 0.0  # HM(1e-12, 50) ≈ 2e-12.
  assert out["final_score"] == 0.0
  assert out["strict"]["entity_result"] == {"seen": 50.0, "unseen": 25.0}
  assert out["strict"]["entity_score"] == 33.33  # 2 / (1/50 + 1/25) = 33.333..
  assert out["counts"]["entity_val_seen"] == {"references": 4, "predictions": 3, "missing": 1}
  flat = om.flat_metrics(out)
  assert flat["entity_seen"] == 66.67 and flat["strict/entity_seen"] == 50.0


def test_bucket_without_predictions_is_none_officially_and_zero_strictly():
  es, eu = _refs("entity", "seen", 2), _refs("entity", "unseen", 2, start=5)
  out = om.score(es + eu, _preds(es, 2))
  assert out["entity_result"] == {"seen": 100.0, "unseen": None}
  assert out["entity_score"] is None and out["final_score"] is None  # Official: KeyError.
  assert out["strict"]["entity_result"] == {"seen": 100.0, "unseen": 0.0}
  assert out["strict"]["query_score"] is None  # No query references at all.


def test_duplicates_count_twice_officially_but_are_errors_in_score():
  es, eu = _refs("entity", "seen", 2), _refs("entity", "unseen", 1, start=5)
  preds = _preds(es, 1) + [dict(_preds(es, 1)[0])] + _preds(eu, 1)
  assert om.official_counts(es + eu, preds)["entity_val_seen"] == [2, 3]
  with pytest.raises(om.OvenFormatError, match="duplicate prediction.*entity_seen_0"):
    om.score(es + eu, preds)


def test_unknown_ids_and_mixed_splits_are_errors():
  es = _refs("entity", "seen", 2)
  with pytest.raises(om.OvenFormatError, match="no reference has"):
    om.score(es, _preds(es, 1) + [{"data_id": "nope", "pred_entity_id": "Q1"}])
  with pytest.raises(om.OvenFormatError, match="no reference has"):
    om.official_counts(es, [{"data_id": "nope", "pred_entity_id": "Q1"}])
  test_seen = [dict(r, data_id=r["data_id"] + "t", data_split="entity_test_seen") for r in es]
  with pytest.raises(om.OvenFormatError, match="same bucket"):
    om.score(es + test_seen, _preds(es + test_seen, 1))


def _write(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def test_file_round_trip_and_format_errors(tmp_path):
  refs = _refs("entity", "seen", 3) + _refs("entity", "unseen", 2, start=9)
  ref_path = _write(tmp_path / "oven_entity_val.jsonl", refs)
  preds = _preds(refs, 4)
  pred_path = oven_files.write_predictions(str(tmp_path / "pred.jsonl"), preds + [])
  assert oven_files.read_predictions(pred_path) == preds
  assert oven_files.read_references(ref_path, required=oven_files.REFERENCE_KEYS) == refs
  lines = open(pred_path).read().splitlines()
  assert json.loads(lines[0]) == {"data_id": "entity_seen_0", "pred_entity_id": "Q1"}
  assert om.score_files(ref_path, pred_path)["entity_result"] == {"seen": 100.0, "unseen": 50.0}

  bad = _write(tmp_path / "bad.jsonl", [{"data_id": "a"}])
  with pytest.raises(om.OvenFormatError, match=r"bad.jsonl:1: pred_entity_id is missing"):
    oven_files.read_predictions(bad)
  dup = _write(tmp_path / "dup.jsonl", preds[:1] + preds[:1])
  with pytest.raises(om.OvenFormatError, match=r"dup.jsonl:2: duplicate prediction"):
    oven_files.read_predictions(dup)
  dup_ref = _write(tmp_path / "dupref.jsonl", refs[:1] + refs[:1])
  with pytest.raises(om.OvenFormatError, match=r"dupref.jsonl:2: duplicate reference"):
    oven_files.read_references(dup_ref)
  no_split = _write(tmp_path / "nosplit.jsonl", [{"data_id": "a", "entity_id": "Q1"}])
  with pytest.raises(om.OvenFormatError, match=r"nosplit.jsonl:1: reference key 'data_split'"):
    oven_files.read_references(no_split)
  (tmp_path / "junk.jsonl").write_text("{not json\n")
  with pytest.raises(om.OvenFormatError, match=r"junk.jsonl:1: not JSON"):
    oven_files.read_predictions(str(tmp_path / "junk.jsonl"))


def test_cli_prints_one_json_object(tmp_path, capsys):
  es, eu = _refs("entity", "seen", 2), _refs("entity", "unseen", 2, start=5)
  qs, qu = _refs("query", "seen", 2, start=20), _refs("query", "unseen", 2, start=30)
  ref_e = _write(tmp_path / "oven_entity_val.jsonl", es + eu)
  ref_q = _write(tmp_path / "oven_query_val.jsonl", qs + qu)
  pred = _write(tmp_path / "pred.jsonl", _preds(es, 1) + _preds(eu, 2) + _preds(qs, 2)
                + _preds(qu, 1, count=1))
  assert eval_stage.main(["oven", "--references", ref_e, ref_q, "--predictions", pred]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["entity_result"] == {"seen": 50.0, "unseen": 100.0}
  assert out["query_result"] == {"seen": 100.0, "unseen": 100.0}
  assert out["strict"]["query_result"] == {"seen": 100.0, "unseen": 50.0}
  assert (out["entity_score"], out["query_score"], out["final_score"]) == (66.67, 100.0, 80.0)
  assert out["strict"]["final_score"] == 66.67


def test_cli_subprocess_errors_are_one_line(tmp_path):
  refs = _refs("entity", "seen", 1)
  ref = _write(tmp_path / "r.jsonl", refs)
  pred = _write(tmp_path / "p.jsonl", [{"data_id": "zzz", "pred_entity_id": "Q1"}])
  proc = subprocess.run([sys.executable, "-m", "rew_jax", "eval", "oven", "--references", ref,
                         "--predictions", pred], capture_output=True, text=True, check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip().startswith("error: prediction for data_id 'zzz'")
  assert len(proc.stderr.strip().splitlines()) == 1
  proc = subprocess.run([sys.executable, "-m", "rew_jax", "eval", "--config", "c.py",
                         "--workdir", str(tmp_path)], capture_output=True, text=True, check=False)
  assert proc.returncode == 2 and "config file 'c.py' does not exist" in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1
