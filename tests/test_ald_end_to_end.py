"""GER-ALD codes end to end: the KB build writes the codes, the pretraining recipe
(configs/git_large_rew.py:target=ald, runlocal) trains on them, and both decodings (GER-ALD's
free beam + lookup, and the code-trie-constrained beam) map what the model generates back to
KB entity ids in the OVEN evaluator's files.

The records all show one entity, so that a few steps suffice for the tiny model to emit its
code: the test checks the plumbing (targets are the code, decoded codes → that entity's id),
not recognition.
"""

import csv
import json
import os

import numpy as np
import pytest
import tokenizers

from rew_jax import config as config_lib
from rew_jax import records
from rew_jax import train as train_lib
from rew_jax.data import code_table
from rew_jax.data import pipeline
from rew_jax.data import synthetic
from rew_jax.data import synthetic_images as si
from rew_jax.evaluators import mapping as mapping_lib
from rew_jax.kb import codes as codes_lib
from rew_jax.kb import text_encoder
from rew_jax.kb import wiki6m

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 20


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("ald")
  cfg = synthetic.default_config()
  cfg.num_entities = 30
  entities = [e for e in synthetic.make_entities(cfg) if e.category != "concept"]
  with open(root / "kb.jsonl", "w") as f:
    for e in entities:
      f.write(json.dumps({"wikidata_id": e.entity_id, "wikipedia_title": e.title}) + "\n")
  kb = wiki6m.EntityKB.build(str(root / "kb.jsonl"), str(root / "kb"), progress=False)
  tok = tokenizers.Tokenizer.from_file(
      os.path.join(text_encoder.default_model_dir(), "tokenizer.json"))
  tok.no_padding()
  codes_lib.build_name_artifacts(kb, tok)
  target = entities[7]
  rng = np.random.default_rng(0)
  recs = [records.RewRecord(
      image_id=f"img_{i:03d}", image=si.encode_jpeg(si.draw([target.look], rng, min_size=32,
                                                             max_size=40)),
      caption="", entity_id=target.entity_id, entity_name=target.title,
      curation_status="kept", backend="test") for i in range(16)]
  records.write_records(str(root / "records"), recs, records_per_shard=16)
  os.makedirs(root / "images")
  refs = []
  for i in range(4):
    image_id = f"oven_{i:08d}"
    with open(root / "images" / f"{image_id}.jpg", "wb") as f:
      f.write(si.encode_jpeg(si.draw([target.look], rng, min_size=32, max_size=40)))
    refs.append({"data_id": f"oven_entity_val_{i:08d}", "image_id": image_id,
                 "question": "what is the main object?", "entity_id": target.entity_id,
                 "data_split": "entity_val_seen" if i % 2 else "entity_val_unseen"})
  with open(root / "oven_entity_val.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in refs)
  return dict(root=root, kb=str(root / "kb"), target=target,
              table=code_table.load_codes(str(root / "kb" / code_table.FILE_NAME)))


def _config(setup, workdir):
  c = config_lib.load_config(os.path.join(REPO, "configs", "git_large_rew.py") +
                             f":runlocal,tasks=entity,kb_dir={setup['kb']}").train
  c.input.data_dir = str(setup["root"] / "records")
  c.total_steps, c.log_every = STEPS, STEPS
  c.optim.update(dict(lr=1e-3, warmup_steps=1))
  c.mesh = config_lib.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.loss.label_smoothing = 0.0
  c.checkpoint.every = STEPS
  c.predict = config_lib.ConfigDict(dict(code_trie=os.path.join(setup["kb"], "code_trie.npz"),
                                         code_len=4, num_beams=2))
  c.evals = config_lib.ConfigDict()
  for name, pred in (("lookup", "ald_rows"), ("trie", "ald_trie_rows")):
    c.evals[name] = config_lib.ConfigDict(dict(
        type="oven", pred=pred, every=STEPS,
        references=(str(setup["root"] / "oven_entity_val.jsonl"),),
        image_dir=str(setup["root"] / "images"),
        mapping=dict(mode="rows", kb_dir=setup["kb"]), batch_size=4,
        pp=("decode|resize_crop(32)|normalize('clip')|"
            "tokenize(key='prompt', bos=True, max_len=8)|pad(8, key='prompt')")))
  return c


def test_the_training_targets_are_the_kb_codes(setup, tmp_path):
  config = train_lib.with_defaults(_config(setup, tmp_path))
  batch = next(iter(pipeline.from_config(config.input)))
  row = int(setup["table"].rows_of([setup["target"].entity_id])[0])
  code = setup["table"].tokens(row)
  want = code + [codes_lib.SEP_ID] + [0] * (8 - len(code) - 1)
  assert batch["target"].tolist() == [want] * len(batch["target"])


@pytest.mark.slow
def test_trains_on_codes_and_decodes_them_to_kb_entities(setup, tmp_path):
  workdir = str(tmp_path / "run")
  out = train_lib.train(_config(setup, workdir), workdir)
  assert np.isfinite(out["metrics"]["loss"])
  target, table = setup["target"], setup["table"]
  kb = wiki6m.EntityKB(setup["kb"])
  code_of = {kb.ids[r]: " ".join(map(str, table.tokens(r))) for r in range(len(kb))}
  for name in ("lookup", "trie"):
    directory = os.path.join(workdir, "eval", name, f"step_{STEPS}")
    with open(os.path.join(directory, "table.tsv")) as f:
      got = list(csv.DictReader(f, delimiter="\t"))
    assert len(got) == 4
    for r in got:
      if r["pred_entity_id"]:  # A KB entity: the one whose code the model generated.
        assert r["pred_entity_id"] == kb.ids[int(r["row"])]
        assert r["tokens"] == code_of[r["pred_entity_id"]], (name, r)
      else:  # No entity: what was generated is no KB code.
        assert name == "lookup" and r["tokens"] not in code_of.values(), r
    with open(os.path.join(directory, "predictions_entity.jsonl")) as f:
      preds = {p["data_id"]: p["pred_entity_id"] for p in map(json.loads, f)}
    assert preds == {r["data_id"]: r["pred_entity_id"] or None for r in got}
  # Constrained to the KB's codes, the model that saw one entity names it every time.
  assert out["metrics"]["trie/entity_seen"] == out["metrics"]["trie/entity_unseen"] == 100.0
  assert target.entity_id in code_of


def test_a_code_the_kb_does_not_have_maps_to_no_entity(setup):
  """The `codes` mapping of free `generate` tokens: an unknown code is no entity."""
  kb = wiki6m.EntityKB(setup["kb"])
  mapper = mapping_lib.from_config("codes", kb=kb)
  table = setup["table"]
  tokens = np.array([table.codes[3], [1999, 1999, 1999, codes_lib.SEP_ID, 0]], np.int32)
  assert [m.entity_id for m in mapper({"tokens": tokens})] == [kb.ids[3], None]
