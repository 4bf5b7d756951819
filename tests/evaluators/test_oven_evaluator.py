"""The OVEN evaluator end to end with fake predict functions, and each mapping mode."""

import csv
import json
import os

import numpy as np
import pytest

from rew_jax.data import oven_files
from rew_jax.data import synthetic_images
from rew_jax.evaluators import common
from rew_jax.evaluators import mapping as mapping_lib
from rew_jax.evaluators import oven
from rew_jax.evaluators import oven_metric
from rew_jax.errors import ConfigError
from rew_jax.registry import EVALUATORS

# KB of 4 entities; an image's solid grey level encodes the KB row of its entity.
KB_IDS = ["Q10", "Q20", "Q30", "Q40"]
TITLES = ["Crimson Kestrel", "Azure Heron", "Golden Falcon", "Violet Sparrow"]
PP = "decode|resize(4)|tokenize(key='prompt', bos=True, max_len=8)|pad(8, key='prompt')"


def _grey(row):
  return 40 + 50 * row


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  root = tmp_path_factory.mktemp("oven")
  image_dir = root / "images"
  refs = []
  # (split, truth row, row the fake model sees): entity seen 2/3 right, unseen 1/2, query 1/1, 0/1.
  plan = [("entity_val_seen", 0, 0), ("entity_val_seen", 1, 1), ("entity_val_seen", 2, 3),
          ("entity_val_unseen", 3, 3), ("entity_val_unseen", 2, 1),
          ("query_val_seen", 1, 1), ("query_val_unseen", 0, 2)]
  for i, (split, truth, seen) in enumerate(plan):
    image_id = f"oven_{i + 5:08d}"
    folder = image_dir / image_id.split("_")[-1][:2]
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.full((12, 16, 3), _grey(seen), np.uint8)
    (folder / f"{image_id}.jpg").write_bytes(synthetic_images.encode_jpeg(pixels, 95))
    task = split.split("_")[0]
    refs.append({"data_id": f"oven_{task}_val_{i:08d}", "image_id": image_id,
                 "question": "what is this bird?", "entity_id": KB_IDS[truth],
                 "entity_text": TITLES[truth], "data_split": split})
  paths = []
  for task in ("entity", "query"):
    path = root / f"oven_{task}_val.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in refs if r["data_split"].startswith(task)))
    paths.append(str(path))
  return {"refs": paths, "image_dir": str(image_dir), "rows": [p[2] for p in plan]}


def _rows_from_image(batch):
  grey = batch["image"][..., 0].mean(axis=(1, 2))
  return np.round((grey - 40) / 50).astype(np.int32)


def predict_rows(params, batch):
  assert batch["image"].shape[1:] == (4, 4, 3) and batch["prompt"].shape[1:] == (8,)
  assert batch["prompt"][0, 0] == 101  # BOS first.
  return {"rows": _rows_from_image(batch) + params["offset"]}


def test_rows_mode_scores_writes_files_and_is_registered(world, tmp_path):
  evaluator = EVALUATORS.get("oven")(
      predict_rows, references=world["refs"], image_dir=world["image_dir"], pp=PP, batch_size=2,
      mapper=mapping_lib.RowMapper(KB_IDS), workdir=str(tmp_path))
  metrics = dict(evaluator.run({"offset": 0}, step=7))
  assert metrics["oven/entity_seen"] == 66.67 and metrics["oven/entity_unseen"] == 50.0
  assert metrics["oven/query_seen"] == 100.0 and metrics["oven/query_unseen"] == 0.0
  assert metrics["oven/entity_score"] == 57.14  # 2 / (1/66.67 + 1/50).
  assert metrics["oven/query_score"] == 0.0 and metrics["oven/final_score"] == 0.0
  assert metrics["oven/no_entity_frac"] == 0.0
  out = tmp_path / "eval" / "oven" / "step_7"
  # The written prediction files score the same with the standalone scorer.
  rescored = oven_metric.score_files(world["refs"], [str(out / "predictions_entity.jsonl"),
                                                     str(out / "predictions_query.jsonl")])
  assert rescored["entity_score"] == 57.14
  lines = (out / "predictions_entity.jsonl").read_text().splitlines()
  assert json.loads(lines[2]) == {"data_id": "oven_entity_val_00000002", "pred_entity_id": "Q40"}
  table = (out / "table.tsv").read_text().splitlines()
  assert table[0].split("\t")[:8] == ["data_id", "image_id", "data_split", "question", "entity_id",
                                      "entity_text", "pred_entity_id", "correct"]
  assert len(table) == 8 and table[3].split("\t")[7] == "0"
  assert json.load(open(out / "metrics.json"))["final_score"] == 0.0


def test_rows_out_of_range_map_to_no_entity(world):
  evaluator = oven.Evaluator(predict_rows, references=world["refs"][:1],
                             image_dir=world["image_dir"],
                             pp=PP, batch_size=2, mapper=mapping_lib.RowMapper(KB_IDS))
  metrics = dict(evaluator.run({"offset": 10}))  # Every row beyond the KB.
  assert metrics["oven/entity_seen"] == 0.0 and metrics["oven/no_entity_frac"] == 1.0
  assert "oven/final_score" not in metrics  # Query references absent.


def test_from_config_builds_and_rejects_unknown_keys(world):
  evals = {"oven_val": dict(type="oven", pred="rows", every=500, references=world["refs"],
                            image_dir=world["image_dir"], pp=PP, batch_size=4)}
  built = common.from_config(evals, {"rows": predict_rows},
                             mapper=mapping_lib.RowMapper(KB_IDS))
  assert dict(built["oven_val"].run({"offset": 0}))["oven_val/entity_seen"] == 66.67
  with pytest.raises(ConfigError, match="unknown config key evals.oven_val.bogus; valid keys"):
    common.from_config({"oven_val": dict(evals["oven_val"], bogus=1)}, {"rows": predict_rows})
  # A misspelt option names the closest ones, from a block and from Python alike.
  with pytest.raises(ConfigError, match="evals.oven_val.batchsize; closest valid keys: "
                                        "batch_size"):
    common.from_config({"oven_val": dict(evals["oven_val"], batchsize=4)}, {"rows": predict_rows})
  with pytest.raises(ConfigError, match="unknown config key oven.image_di; closest valid keys: "
                                        "image_dir"):
    oven.Evaluator(predict_rows, references=world["refs"], image_di=world["image_dir"])
  defaults = oven.Evaluator.default_config()
  assert defaults["pp"] == oven.DEFAULT_PP and defaults["batch_size"] == 32
  assert defaults["num_threads"] == 0 and defaults["num_workers"] == 0
  with pytest.raises(Exception, match="pred='nope'"):
    common.from_config({"oven_val": dict(evals["oven_val"], pred="nope")}, {"rows": predict_rows})


def _test_split(world, root):
  """The world's references as OVEN's test files: renamed splits, no labels."""
  paths = []
  for path in world["refs"]:
    rows = [json.loads(line) for line in open(path)]
    for r in rows:
      r["data_id"] = r["data_id"].replace("_val_", "_test_")
      r["data_split"] = r["data_split"].replace("_val", "_test")
      del r["entity_id"], r["entity_text"]
    out = root / os.path.basename(path).replace("_val", "_test")
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths.append(str(out))
  return paths


def test_test_split_predictions_written_in_the_official_format_not_scored(world, tmp_path):
  refs = _test_split(world, tmp_path)
  evaluator = oven.Evaluator(predict_rows, references=refs, image_dir=world["image_dir"], pp=PP,
                             batch_size=2, mapper=mapping_lib.RowMapper(KB_IDS),
                             name="oven_test", workdir=str(tmp_path))
  assert evaluator.holds_test
  metrics = dict(evaluator.run({"offset": 0}, step=3))
  assert metrics == {"oven_test/no_entity_frac": 0.0, "oven_test/unlabeled": 7}  # No scores.
  out = tmp_path / "eval" / "oven_test" / "step_3"
  preds = oven_files.read_predictions([str(out / "predictions_entity.jsonl"),
                                       str(out / "predictions_query.jsonl")])
  want = [KB_IDS[r] for r in world["rows"]]  # What the fake model sees in each image.
  assert [p["pred_entity_id"] for p in preds] == want
  assert all(set(json.loads(line)) == {"data_id", "pred_entity_id"}
             for line in open(out / "predictions_entity.jsonl"))
  assert [p["data_id"] for p in preds][:2] == ["oven_entity_test_00000000",
                                               "oven_entity_test_00000001"]
  result = json.load(open(out / "metrics.json"))
  assert result["final_score"] is None and result["counts"] == {}
  assert result["unlabeled"]["entity_test_seen"] == {"references": 3, "predictions": 3}
  # The scorer checks a submission against unlabeled references: ids and duplicates.
  with pytest.raises(oven_files.OvenFormatError, match="duplicate prediction"):
    oven_metric.score(oven_files.read_references(refs), preds + preds[:1])
  table = list(csv.DictReader(open(out / "table.tsv"), delimiter="\t"))
  assert {r["correct"] for r in table} == {""} and {r["entity_id"] for r in table} == {""}


def test_labels_where_present_are_scored_and_splits_never_mix(world, tmp_path):
  refs = _test_split(world, tmp_path)
  rows = [json.loads(line) for line in open(refs[0])]
  rows[0]["entity_id"] = KB_IDS[0]  # One labelled test reference: scored.
  (tmp_path / "partial.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  evaluator = oven.Evaluator(predict_rows, references=[str(tmp_path / "partial.jsonl")],
                             image_dir=world["image_dir"], pp=PP, batch_size=4,
                             mapper=mapping_lib.RowMapper(KB_IDS))
  metrics = dict(evaluator.run({"offset": 0}))
  assert metrics["oven/entity_seen"] == 100.0 and metrics["oven/unlabeled"] == 4
  with pytest.raises(oven_files.OvenFormatError, match="mix the splits \\['test', 'val'\\]"):
    oven.Evaluator(predict_rows, references=world["refs"][:1] + refs[:1],
                   image_dir=world["image_dir"], pp=PP, mapper=mapping_lib.RowMapper(KB_IDS))


class _Model:
  def predict_fns(self, config):
    del config
    return {"rows": predict_rows}


def test_a_test_split_evaluator_never_runs_during_training(world, tmp_path):
  from rew_jax import config as config_lib
  refs = _test_split(world, tmp_path)
  block = dict(type="oven", pred="rows", references=world["refs"], image_dir=world["image_dir"],
               pp=PP, batch_size=4, mapper=mapping_lib.RowMapper(KB_IDS))
  config = config_lib.ConfigDict(dict(total_steps=10, predict={}, evals=dict(
      oven_val=dict(block, every=5), oven_test=dict(block, references=refs, every=0)),
      early_stopping=dict(metric="oven_val/final_score", patience=2)))
  training = common.from_train_config(config, _Model())
  assert list(training) == ["oven_val"] and training["oven_val"][1] == 5
  assert sorted(common.from_train_config(config, _Model(), training=False)) == [
      "oven_test", "oven_val"]
  config.evals.oven_test.every = 5  # A test split inside the train loop: refused.
  with pytest.raises(ConfigError, match="evals.oven_test holds a test split"):
    common.from_train_config(config, _Model())
  config.evals.oven_test.every = 0
  config.early_stopping.metric = "oven_test/final_score"
  with pytest.raises(ConfigError, match="watches evals.oven_test, which has every=0"):
    common.from_train_config(config, _Model())


def test_missing_image_is_a_clear_error(world, tmp_path):
  with pytest.raises(oven_files.OvenFormatError, match="image 'oven_00000005' not found"):
    oven_files.image_path(str(tmp_path), "oven_00000005")


def test_code_mapper_top_beam_and_first_valid():
  codes = np.array([[1000 + r, 2000 + r, 102, 0] for r in range(4)], np.int32)
  valid = [1002, 2002, 102, 0]
  invalid = [1002, 2001, 102, 0]  # Not any entity's code.
  tokens = np.array([[invalid, valid], [valid, invalid], [[1003, 2003, 2003, 2003], valid]])
  top = mapping_lib.CodeMapper(codes, KB_IDS)({"tokens": tokens})
  assert [m.entity_id for m in top] == [None, "Q30", None]
  assert top[0].info == {"row": -1, "code": "1002 2001"}
  first = mapping_lib.CodeMapper(codes, KB_IDS, first_valid=True)({"tokens": tokens})
  assert [m.entity_id for m in first] == ["Q30", "Q30", "Q30"]
  # Without a beam axis.
  no_beam = mapping_lib.CodeMapper(codes, KB_IDS)({"tokens": tokens[:, 1]})
  assert [m.entity_id for m in no_beam] == ["Q30", None, "Q30"]


class _DictResolver:
  def __init__(self, names):
    self.names = names

  def resolve(self, name, candidates=()):
    del candidates
    qid = self.names.get(name.lower())
    return mapping_lib._Resolution(qid, "exact" if qid else "abstain")


def test_text_mapper_decodes_tokens_and_resolves():
  from rew_jax.data.tokenizers import load_tokenizer
  tok = load_tokenizer("bert")
  seqs = [tok.encode("golden falcon") + [102], tok.encode("a mystery bird") + [102]]
  width = max(map(len, seqs)) + 2
  tokens = np.array([s + [0] * (width - len(s)) for s in seqs], np.int32)
  mapper = mapping_lib.TextMapper(_DictResolver({"golden falcon": "Q30"}), tokenizer=tok)
  out = mapper({"tokens": tokens})
  assert [m.entity_id for m in out] == ["Q30", None]
  assert out[0].info == {"text": "golden falcon", "method": "exact"}
  assert [m.entity_id for m in mapper({"text": np.array(["Golden Falcon"])})] == ["Q30"]


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
  from rew_jax.kb import wiki6m
  root = tmp_path_factory.mktemp("kb")
  src = root / "kb.jsonl"
  src.write_text("".join(json.dumps({"wikidata_id": q, "wikipedia_title": t,
                                     "wikipedia_summary": "", "wikipedia_content": ""}) + "\n"
                         for q, t in zip(KB_IDS, TITLES)))
  return wiki6m.EntityKB.build(str(src), str(root / "index"), progress=False)


def test_from_config_modes_on_a_real_kb(kb):
  from rew_jax.data.tokenizers import load_tokenizer
  from rew_jax.kb import codes as codes_lib
  tok = load_tokenizer("bert")
  rows = mapping_lib.from_config("rows", kb=kb)({"rows": np.array([[2, 0], [-1, 1]])})
  assert [m.entity_id for m in rows] == ["Q30", None]
  codes = codes_lib.ald_codes(tok.encode_batch(TITLES), length=2)
  # The file codes.build_name_artifacts writes.
  codes_lib.save_codes(kb.path("ald_codes.npz"), KB_IDS, codes, length=2, seed=0)
  code_mapper = mapping_lib.from_config("codes", kb=kb)
  assert [m.entity_id for m in code_mapper({"tokens": codes[[3, 1]]})] == ["Q40", "Q20"]
  codes_lib.save_codes(kb.path("ald_codes.npz"), KB_IDS[::-1], codes, length=2, seed=0)
  with pytest.raises(ConfigError, match="belongs to another KB"):
    mapping_lib.from_config("codes", kb=kb)
  cascade = mapping_lib.from_config("text", kb=kb, tokenizer=tok)
  got = cascade({"text": np.array(["golden falcon", "Golden Falconn", "nothing at all"])})
  assert [m.entity_id for m in got] == ["Q30", "Q30", None]
  assert [m.info["method"] for m in got] == ["normalized", "fuzzy", "abstain"]
  bm25 = mapping_lib.from_config("text", kb=kb, tokenizer=tok, resolver="bm25")
  got = bm25({"text": np.array(["heron by the lake", "nothing at all"])})
  assert [m.entity_id for m in got] == ["Q20", None]
  with pytest.raises(Exception, match="mapping.mode 'beam'"):
    mapping_lib.from_config("beam", kb=kb)
