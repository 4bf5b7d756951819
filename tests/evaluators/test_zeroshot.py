"""Zero-shot classification in entity space: class maps (resolver, a person's corrections),
on-disk and mock-TFDS sets, trie and likelihood modes, unmapped classes kept and reported."""

import io
import json

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from rew_jax.data import code_table
from rew_jax.data import ops
from rew_jax.data import tfds_sources
from rew_jax.data.tokenizers import load_tokenizer
from rew_jax.evaluators import finegrained, zeroshot
from rew_jax.kb.wiki6m import EntityKB
from rew_jax.models import trie as trie_lib
from rew_jax.registry import EVALUATORS

EOS = 102  # BERT [SEP], the EOS the evaluator builds its trie with.
PP = "resize(4, method='nearest')|tokenize(key='prompt', bos=True, max_len=8)|pad(8, key='prompt')"
KB = [("Q1", "Rose"), ("Q2", "Rose hip"), ("Q3", "Helianthus annuus"), ("Q4", "Sunflower seed"),
      ("Q5", "Primula vulgaris")]
CLASSES = ["rose", "rose hip", "sunflower", "pink primrose"]


@pytest.fixture(scope="module")
def tok():
  return load_tokenizer("bert")


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
  root = tmp_path_factory.mktemp("kb")
  (root / "kb.jsonl").write_text("".join(
      json.dumps({"wikidata_id": q, "wikipedia_title": t, "wikipedia_summary": t}) + "\n"
      for q, t in KB))
  return EntityKB.build(str(root / "kb.jsonl"), str(root / "index"), progress=False)


def test_clean_class_name_is_one_rule():
  assert tfds_sources.clean_class_name("apple_pie") == "apple pie"
  assert tfds_sources.clean_class_name("/a/abbey") == "abbey"
  assert tfds_sources.clean_class_name("/b/bakery/shop") == "bakery shop"
  assert tfds_sources.clean_class_name("F-16A/B") == "F-16A/B"  # FGVC-Aircraft, not a path.
  assert zeroshot.finegrained.clean_class_name is tfds_sources.clean_class_name


def test_class_map_resolves_then_keeps_a_persons_correction(kb, tmp_path):
  path = str(tmp_path / "flowers.jsonl")
  calls = []

  def resolver_fn():
    calls.append(1)
    return zeroshot.make_resolver(kb)

  rows = finegrained.load_class_map(path, CLASSES, kb, resolver_fn)
  assert [(r.class_name, r.entity_id, r.method) for r in rows] == [
      ("rose", "Q1", "normalized"), ("rose hip", "Q2", "normalized"),
      ("sunflower", "", "abstain"), ("pink primrose", "", "abstain")]
  # A person maps "sunflower" by hand; a new class appears in the set.
  lines = open(path).read().splitlines()
  fixed = dict(json.loads(lines[2]), entity_id="Q3", source="manual")
  lines[2] = json.dumps(fixed)
  open(path, "w").write("\n".join(lines) + "\n")
  rows = finegrained.load_class_map(path, CLASSES + ["sunflower seed"], kb, resolver_fn)
  assert [r.entity_id for r in rows] == ["Q1", "Q2", "Q3", "", "Q4"]
  assert rows[2].source == "manual" and rows[2].entity_name == "Helianthus annuus"
  assert len(calls) == 2  # Only the new class was resolved the second time.
  assert finegrained.load_class_map(path, CLASSES + ["sunflower seed"], kb,
                                    lambda: 1 / 0)[2].entity_id == "Q3"
  open(path, "a").write(json.dumps({"class_name": "tulip", "entity_id": "Q1"}) + "\n")
  with pytest.raises(finegrained.SetFormatError, match=r"flowers.jsonl:6: class 'tulip'"):
    finegrained.read_class_map(path, CLASSES + ["sunflower seed"], kb)
  open(path, "w").write(json.dumps({"class_name": "rose", "entity_id": "Q99"}) + "\n")
  with pytest.raises(finegrained.SetFormatError, match="entity 'Q99' of class 'rose' is not"):
    finegrained.read_class_map(path, CLASSES, kb)


def _png(grey):
  buf = io.BytesIO()
  Image.fromarray(np.full((5, 7, 3), grey, np.uint8)).save(buf, format="PNG")
  return buf.getvalue()


def test_on_disk_layouts(tmp_path):
  for name, grey in (("Boeing_737-300", 20), ("F-16A", 60)):
    (tmp_path / "folders" / "test" / name).mkdir(parents=True)
    for i in range(2):
      (tmp_path / "folders" / "test" / name / f"{i}.png").write_bytes(_png(grey))
  s = finegrained.open_set("aircraft", root=str(tmp_path / "folders"))
  assert s.class_names == ["Boeing 737-300", "F-16A"] and len(s) == 4
  assert s[3]["label"] == 1 and s[3]["image"] == _png(60)
  (tmp_path / "csv" / "img").mkdir(parents=True)
  (tmp_path / "csv" / "img" / "a.png").write_bytes(_png(20))
  (tmp_path / "csv" / "test.csv").write_text("image,label\nimg/a.png,air_hockey\nimg/a.png,"
                                             "archery\n")
  s = finegrained.open_set("sports100", root=str(tmp_path / "csv"))
  assert s.class_names == ["air hockey", "archery"] and [s[i]["label"] for i in (0, 1)] == [0, 1]
  (tmp_path / "csv" / "test.csv").write_text("image,label\nimg/a.png,archery\nimg/b.png,x\n")
  with pytest.raises(finegrained.SetFormatError, match=r"test.csv:3: image 'img/b.png' not found"):
    finegrained.open_set("sports100", root=str(tmp_path / "csv"))
  with pytest.raises(Exception, match="is read from disk: set its root"):
    finegrained.open_set("aircraft")
  with pytest.raises(finegrained.SetFormatError, match="neither valid.csv nor a valid/"):
    finegrained.open_set("aircraft", root=str(tmp_path / "folders"), split="valid")


def _walk(trie, tokens):
  """Trie leaf rows of complete sequences [B, T] (EOS-terminated), as constrained decoding
  reports them."""
  node = jnp.zeros(tokens.shape[0], jnp.int32)
  ended = jnp.zeros(tokens.shape[0], bool)
  for t in range(tokens.shape[1]):
    tok = jnp.asarray(tokens[:, t])
    node = jnp.where(ended, node, trie_lib.advance(trie, node, tok))
    ended = ended | (tok == EOS)
  return np.asarray(trie.leaf_row[jnp.maximum(node, 0)])


def _grey_class(batch, num):
  grey = batch["image"][:, 0, 0, 0].astype(np.float32)
  return np.round((grey - 20) / 40).astype(int) % num


def make_trie_predict(tok, names):
  """A fake model that 'generates' the name its image's grey level encodes (names[i])."""
  tokens = zeroshot.class_token_table(tok.encode_batch(names), tok.eos_id)

  def predict(params, batch, *, trie):
    del params
    assert batch["prompt"][0, 0] == tok.bos_id
    generated = tokens[_grey_class(batch, len(names))]
    return {"rows": np.stack([_walk(trie, generated), np.zeros(len(generated), int)], axis=1)}

  return predict


def _set():
  # (grey index the fake model sees, true class): class 3 ("pink primrose") is unmapped.
  plan = [(0, 0), (1, 1), (2, 2), (1, 0), (0, 3)]
  return finegrained.LabelledSet("flowers102", CLASSES, [
      {"image": np.full((5, 7, 3), 20 + 40 * seen, np.uint8), "label": label}
      for seen, label in plan])


ENTITIES = [{"entity_id": "Q1", "entity_name": "Rose"},
            {"entity_id": "Q2", "entity_name": "Rose hip"},
            {"entity_id": "Q3", "entity_name": "Helianthus annuus"}, None]


def test_trie_mode_in_entity_space(tok, tmp_path):
  class_map = finegrained.injected_class_map(CLASSES, ENTITIES)
  names = ["Rose", "Rose hip", "Helianthus annuus"]  # "Rose" is a prefix of "Rose hip".
  evaluator = EVALUATORS.get("zeroshot")(
      make_trie_predict(tok, names), sets={"flowers102": _set()},
      class_maps={"flowers102": class_map}, tokenizer=tok, pp=PP, batch_size=2,
      workdir=str(tmp_path))
  metrics = dict(evaluator.run(None, step=3))
  # 3 of 5 right; the unmapped class's example stays in the denominator.
  assert metrics == {"zeroshot/flowers102/top1": 60.0, "zeroshot/flowers102/unmapped_classes": 1.0,
                     "zeroshot/flowers102/unmapped_examples": 1.0, "zeroshot/mean_top1": 60.0}
  out = tmp_path / "eval" / "zeroshot" / "step_3" / "flowers102"
  table = (out / "table.tsv").read_text().splitlines()
  assert table[4].split("\t") == ["3", "0", "rose", "Q1", "Q2", "Rose hip", "0"]
  saved = json.load(open(out / "metrics.json"))
  assert saved["unmapped_classes"] == ["pink primrose"] and saved["num_entities"] == 3


def test_likelihood_mode_and_two_sets(tok):
  said = ["Rose", "Rose hip", "Helianthus annuus"]  # What the fake model 'sees' per grey level.

  def predict(params, batch, *, class_tokens):
    del params
    assert class_tokens.shape[0] == 3 and (class_tokens == tok.eos_id).sum() == 3
    texts = [tok.decode([t for t in row if t not in (0, tok.eos_id)]) for row in class_tokens]
    seen = _grey_class(batch, 4)
    return {"scores": np.array([[float(t == said[s].lower()) for t in texts] for s in seen])}

  class_map = finegrained.injected_class_map(CLASSES, ENTITIES)
  swapped = finegrained.injected_class_map(CLASSES, [ENTITIES[1], ENTITIES[0]] + ENTITIES[2:])
  evaluator = zeroshot.Evaluator(predict, sets={"a": _set(), "b": _set()},
                                 class_maps={"a": class_map, "b": swapped}, tokenizer=tok,
                                 mode="likelihood", pp=PP, batch_size=3)
  metrics = dict(evaluator.run(None))
  # Set b maps "rose" to Rose hip and "rose hip" to Rose: examples 0 and 1 turn wrong,
  # example 3 (a rose seen as a rose hip) turns right.
  assert metrics["zeroshot/a/top1"] == 60.0 and metrics["zeroshot/b/top1"] == 40.0
  assert metrics["zeroshot/mean_top1"] == 50.0


def test_bad_config(tok):
  with pytest.raises(Exception, match="zeroshot mode 'vote'"):
    zeroshot.Evaluator(None, sets={"a": _set()}, tokenizer=tok, mode="vote")
  with pytest.raises(Exception, match="entity_target 'code'"):
    zeroshot.Evaluator(None, sets={"a": _set()}, tokenizer=tok, entity_target="code")
  with pytest.raises(Exception, match="needs `datasets`"):
    zeroshot.Evaluator(None, tokenizer=tok)
  with pytest.raises(Exception, match="needs kb_dir"):
    zeroshot.Evaluator(None, sets={"a": _set()}, tokenizer=tok)
  nothing = zeroshot.Evaluator(None, sets={"a": _set()}, tokenizer=tok, class_maps={
      "a": finegrained.injected_class_map(CLASSES, [None] * 4)})
  assert dict(nothing.run(None)) == {"zeroshot/a/top1": 0.0, "zeroshot/a/unmapped_classes": 4.0,
                                     "zeroshot/a/unmapped_examples": 5.0, "zeroshot/mean_top1": 0.0}


def test_mock_tfds_flowers_through_the_kb(tok, kb, tmp_path):
  with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE):
    data = finegrained.open_set("flowers102")
    assert len(data.class_names) == 102 and data.class_names[0] == "pink primrose"
    # A person maps two Flowers classes onto the KB; the resolver finds "rose" alone.
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "flowers102.jsonl").write_text(
        json.dumps({"class_name": "pink primrose", "entity_id": "Q5", "source": "manual"}) + "\n" +
        json.dumps({"class_name": "sunflower", "entity_id": "Q3", "source": "manual"}) + "\n")
    names = [dict(KB)["Q5"], dict(KB)["Q3"], dict(KB)["Q1"]]
    evaluator = zeroshot.Evaluator(make_trie_predict(tok, names), datasets="flowers102",
                                   kb_dir=kb.index_dir, class_map_dir=str(tmp_path / "maps"),
                                   tokenizer=tok, pp=PP, batch_size=4)
    run = evaluator.runs["flowers102"]
    assert run.entity_ids == ["Q5", "Q3", "Q1"] and len(run.unmapped) == 99
    assert run.class_map[data.class_names.index("rose")].method == "normalized"
    expected = 0
    for i in range(5):
      seen = _grey_class({"image": ops.get_preprocess(PP)(run.examples[i])["image"][None]}, 3)[0]
      expected += int(run.class_map[data[i]["label"]].entity_id == run.entity_ids[seen])
    metrics = dict(evaluator.run(None))
  assert metrics["zeroshot/flowers102/top1"] == 100.0 * expected / 5
  assert metrics["zeroshot/flowers102/unmapped_classes"] == 99.0
  lines = (tmp_path / "maps" / "flowers102.jsonl").read_text().splitlines()
  assert len(lines) == 102 and json.loads(lines[0])["source"] == "manual"


def test_ald_answer_space_is_the_mapped_entities_codes(tok, kb):
  """For a model trained on ALD codes the trie holds the mapped entities' codes (the KB's
  code table), not their names."""
  # The KB's code table in KB row order (the file the KB build writes): code, EOS, padding.
  table = np.array([[1000 + r, 2000 + r, EOS, 0] if r % 2 else [1000 + r, 2000 + r, 3000, EOS]
                    for r in range(len(KB))], np.int32)
  code_table.save_codes(kb.path(code_table.FILE_NAME), [q for q, _ in KB], table, length=2,
                        seed=0, eos_id=EOS)
  seqs = zeroshot.entity_sequences("ald", ["Q3", "Q2"], ["Helianthus annuus", "Rose hip"],
                                   tokenizer=tok, kb=kb)
  assert seqs == [[1002, 2002, 3000], [1001, 2001]]
  assert zeroshot.entity_sequences("name", ["Q1"], ["Rose"], tokenizer=tok) == [
      tok.encode("Rose")]
  with pytest.raises(Exception, match="entity_target='ald' needs kb_dir"):
    zeroshot.entity_sequences("ald", ["Q3"], ["x"], tokenizer=tok)
