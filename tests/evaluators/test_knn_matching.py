"""kNN matching: the core (KB retrieval top-k + vote) against brute-force numpy, and the
evaluator end to end."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from rew_jax import records as records_lib
from rew_jax.evaluators import finegrained
from rew_jax.evaluators import knn_matching as knn
from rew_jax.registry import EVALUATORS


def brute_force(queries, memory, labels, k, num_classes, weighting):
  q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  keep = np.flatnonzero(labels >= 0)
  m = memory[keep] / np.linalg.norm(memory[keep], axis=1, keepdims=True)
  out = []
  for row in q.astype(np.float64) @ m.T.astype(np.float64):
    order = np.argsort(-row, kind="stable")[:k]
    votes = np.zeros(num_classes)
    first = np.full(num_classes, k)
    for rank, j in enumerate(order):
      c = labels[keep[j]]
      votes[c] += 1.0 if weighting == "uniform" else row[j]
      first[c] = min(first[c], rank)
    tied = [c for c in range(num_classes) if votes[c] == votes.max() and first[c] < k]
    out.append(min(tied, key=lambda c: first[c]))
  return np.array(out)


@pytest.mark.parametrize("k,chunk,weighting", [(1, 64, "uniform"), (5, 7, "uniform"),
                                               (8, 16, "similarity"), (4, 3, "similarity")])
def test_knn_equals_brute_force(k, chunk, weighting):
  rng = np.random.default_rng(k * 100 + chunk)
  queries = rng.normal(size=(30, 16)).astype(np.float32)
  memory = rng.normal(size=(45, 16)).astype(np.float32)
  labels = rng.integers(-1, 4, size=45)  # 4 classes; -1: unlabelled, ignored.
  got = knn.knn_classify(queries, memory, labels, k=k, num_classes=4, weighting=weighting,
                         chunk=chunk)
  np.testing.assert_array_equal(got, brute_force(queries, memory, labels, k, 4, weighting))


def test_vote_tie_goes_to_nearest_and_no_labels():
  assert knn.knn_classify(np.ones((2, 2)), np.ones((3, 2)), np.array([-1, -1, -1]), k=2,
                          num_classes=1).tolist() == [-1, -1]
  # Neighbours by rank: classes 1, 0, 0, 1 → 2 votes each; class 1 holds the nearest.
  sims = np.array([[0.9, 0.8, 0.7, 0.6]], np.float32)
  assert knn.vote(sims, np.array([[1, 0, 0, 1]]), num_classes=2).tolist() == [1]
  assert knn.vote(sims, np.array([[1, 0, 0, -1]]), num_classes=2).tolist() == [0]


def _png(rgb):
  buf = io.BytesIO()
  Image.fromarray(np.full((6, 6, 3), rgb, np.uint8)).save(buf, format="PNG")
  return buf.getvalue()


def embed(params, batch):
  del params
  return {"embedding": batch["image"].astype(np.float32).mean(axis=(1, 2)) - 128.0}


MEMORY = [  # (colour, candidate label, curated label)
    ((200, 30, 30), "QA", "QA"), ((230, 20, 20), "QB", "QA"), ((30, 200, 30), "QB", "QB"),
    ((30, 30, 200), "QA", None), ((20, 20, 230), "QC", "QC")]
QUERIES = [((235, 20, 20), "QA"), ((30, 210, 30), "QB"), ((25, 25, 225), "QC")]


def test_evaluator_candidate_vs_curated(tmp_path):
  memory = [{"image_id": f"m{i}", "image": _png(c), "candidate": a, "curated": b}
            for i, (c, a, b) in enumerate(MEMORY)]
  queries = [{"query_id": f"q{i}", "image": _png(c), "entity_id": t}
             for i, (c, t) in enumerate(QUERIES)]
  evaluator = EVALUATORS.get("knn_matching")(embed, memory=memory, queries=queries, k=1,
                                             pp="decode", batch_size=2, workdir=str(tmp_path))
  metrics = dict(evaluator.run(None))
  # Query 0's nearest image (m1) is a caption-retrieval mistake (QB) that curation fixed.
  assert metrics["knn/candidate_top1"] == pytest.approx(200 / 3)
  assert metrics["knn/curated_top1"] == 100.0
  assert metrics["knn/gain"] == pytest.approx(100 / 3)
  assert metrics["knn/curated_labelled"] == 4 and metrics["knn/candidate_labelled"] == 5
  table = (tmp_path / "eval" / "knn" / "table.tsv").read_text().splitlines()
  assert table[1].split("\t") == ["q0", "QA", "QB", "QA"]
  assert json.load(open(tmp_path / "eval" / "knn" / "metrics.json"))["k"] == 1


def test_memory_from_records_and_queries_from_oven(tmp_path):
  recs = [records_lib.RewRecord(image_id=f"w{i}", image=_png(c),
                                candidates=[{"entity_id": a, "name": a, "score": 1.0}],
                                entity_id=b or "", curation_status=s)
          for i, ((c, a, b), s) in enumerate(zip(MEMORY, ["kept", "corrected", "kept",
                                                          "abstained", "kept"]))]
  records_lib.write_records(str(tmp_path / "rec"), recs)
  memory = knn.memory_from_records(str(tmp_path / "rec"))
  assert [(m["candidate"], m["curated"]) for m in memory] == [(a, b) for _, a, b in MEMORY]
  image_dir = tmp_path / "images"
  refs = []
  for i, (c, t) in enumerate(QUERIES):
    image_id = f"oven_{i:08d}"
    (image_dir / "00").mkdir(parents=True, exist_ok=True)
    (image_dir / "00" / f"{image_id}.png").write_bytes(_png(c))
    refs.append({"data_id": f"d{i}", "image_id": image_id, "entity_id": t,
                 "data_split": "entity_val_seen"})
  (tmp_path / "ref.jsonl").write_text("".join(json.dumps(r) + "\n" for r in refs))
  evaluator = knn.Evaluator(embed, memory_records=str(tmp_path / "rec"),
                            query_references=str(tmp_path / "ref.jsonl"),
                            image_dir=str(image_dir), k=1, pp="decode", name="knn_world")
  metrics = dict(evaluator.run(None))
  assert metrics["knn_world/curated_top1"] == 100.0
  assert metrics["knn_world/gain"] == pytest.approx(100 / 3)


def test_fine_grained_queries_and_one_labelling():
  """Queries of a fine-grained set carry their class's entity; an unmapped class's query
  stays in the denominator. `labellings` picks REW's (curated) labels alone."""
  colours = [(235, 20, 20), (30, 210, 30), (25, 25, 225), (200, 30, 30)]
  data = finegrained.LabelledSet("aircraft", ["red", "green", "blue"], [
      {"image": _png(c), "label": label} for c, label in zip(colours, [0, 1, 2, 0])])
  class_map = finegrained.injected_class_map(["red", "green", "blue"], [
      {"entity_id": "QA"}, {"entity_id": "QB"}, None])
  queries = knn.queries_from_set(data, class_map)
  assert [q["entity_id"] for q in queries] == ["QA", "QB", None, "QA"]
  memory = [{"image_id": f"m{i}", "image": _png(c), "candidate": a, "curated": b}
            for i, (c, a, b) in enumerate(MEMORY)]
  evaluator = knn.Evaluator(embed, memory=memory, queries=queries, labellings=("curated",),
                            k=1, pp="decode")
  metrics = dict(evaluator.run(None))
  assert metrics == {"knn/curated_top1": 75.0, "knn/curated_labelled": 4,
                     "knn/unlabelled_queries": 1}
  with pytest.raises(Exception, match="labellings"):
    knn.Evaluator(embed, memory=memory, queries=queries, labellings=("rew",))
