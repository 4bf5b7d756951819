"""Zero-shot classification: trie and likelihood modes, on injected data and mock TFDS."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from rew_jax.data.tokenizers import load_tokenizer
from rew_jax.evaluators import zeroshot
from rew_jax.models import trie as trie_lib
from rew_jax.registry import EVALUATORS

NAMES = ["rose", "rose hip", "sunflower", "pink primrose"]  # "rose" is a prefix of "rose hip".
EOS = 102  # BERT [SEP], the EOS the evaluator builds its trie with.
PP = "resize(4, method='nearest')|tokenize(key='prompt', bos=True, max_len=8)|pad(8, key='prompt')"


@pytest.fixture(scope="module")
def tok():
  return load_tokenizer("bert")


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


def _grey_class(batch, num_classes):
  grey = batch["image"][:, 0, 0, 0].astype(np.float32)
  return np.round((grey - 20) / 40).astype(int) % num_classes


def make_trie_predict(tok, names):
  """A fake model that 'generates' the name of the class its image's grey level encodes."""
  tokens = zeroshot.class_token_table(tok.encode_batch(names), tok.eos_id)

  def predict(params, batch, *, trie):
    del params
    assert batch["prompt"][0, 0] == tok.bos_id
    generated = tokens[_grey_class(batch, len(names))]
    return {"rows": np.stack([_walk(trie, generated), np.zeros(len(generated), int)], axis=1)}

  return predict


def _source():
  # (grey class the fake model sees, true label): 3 of 5 right.
  plan = [(0, 0), (1, 1), (2, 3), (3, 3), (1, 0)]
  return [{"image": np.full((5, 7, 3), 20 + 40 * seen, np.uint8), "label": label}
          for seen, label in plan]


def test_clean_class_name():
  assert zeroshot.clean_class_name("apple_pie") == "apple pie"
  assert zeroshot.clean_class_name("/a/abbey") == "abbey"
  assert zeroshot.clean_class_name("/b/bakery/shop") == "shop bakery"
  assert zeroshot.clean_class_name("pink primrose") == "pink primrose"


def test_trie_mode_on_injected_source(tok, tmp_path):
  evaluator = EVALUATORS.get("zeroshot")(
      make_trie_predict(tok, NAMES), source=_source(), class_names=NAMES, tokenizer=tok, pp=PP,
      batch_size=2, name="flowers", workdir=str(tmp_path))
  assert dict(evaluator.run(None, step=3)) == {"flowers/top1": 60.0}
  table = (tmp_path / "eval" / "flowers" / "step_3" / "table.tsv").read_text().splitlines()
  assert table[3].split("\t") == ["2", "3", "pink primrose", "2", "sunflower", "0"]
  assert json.load(open(tmp_path / "eval" / "flowers" / "step_3" / "metrics.json"))["top1"] == 60.0


def test_likelihood_mode(tok):
  def predict(params, batch, *, class_tokens):
    del params
    assert class_tokens.shape[0] == 4 and (class_tokens == tok.eos_id).sum() == 4
    seen = _grey_class(batch, 4)
    return {"scores": -np.abs(np.arange(4)[None, :] - seen[:, None]).astype(np.float32)}

  evaluator = zeroshot.Evaluator(predict, source=_source(), class_names=NAMES, tokenizer=tok,
                                 mode="likelihood", pp=PP, batch_size=3)
  assert dict(evaluator.run(None)) == {"zeroshot/top1": 60.0}


def test_bad_config(tok):
  with pytest.raises(Exception, match="zeroshot mode 'vote'"):
    zeroshot.Evaluator(None, source=_source(), class_names=NAMES, tokenizer=tok, mode="vote")
  with pytest.raises(Exception, match="needs `dataset`"):
    zeroshot.Evaluator(None, tokenizer=tok)


def test_mock_tfds_flowers(tok):
  with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE):
    source, names = zeroshot.open_tfds("oxford_flowers102", "test")
    assert len(names) == 102 and names[0] == "pink primrose"
    evaluator = zeroshot.Evaluator(make_trie_predict(tok, names), dataset="oxford_flowers102",
                                   split="test", tokenizer=tok, pp=PP, batch_size=4)
    assert len(evaluator.class_names) == 102 and len(evaluator.indices) == 5
    expected = []
    for i in range(5):
      image = evaluator.load(i)["image"][None]
      expected.append(int(_grey_class({"image": image}, 102)[0] == int(source[i]["label"])))
    assert dict(evaluator.run(None)) == {"zeroshot/top1": 100.0 * sum(expected) / 5}
