"""Tokenizers: the packaged BERT-uncased WordPiece and an in-process sentencepiece."""

import pickle
import shutil

import pytest

from rew_jax.data import tokenizers
from rew_jax.data.tokenizers import TokenizerError


@pytest.fixture(scope="module")
def bert():
  return tokenizers.load_tokenizer("bert")


def test_bert_ids_and_specials(bert):
  assert (bert.vocab_size, bert.pad_id, bert.bos_id, bert.eos_id) == (30522, 0, 101, 102)
  ids = bert.encode("Hello Eiffel Tower, café!")
  # Known BERT-uncased ids; no padding to 128 (the packaged file pads), no [CLS]/[SEP].
  assert ids == [7592, 1041, 13355, 2884, 3578, 1010, 7668, 999]
  assert bert.tokens("Eiffel") == ["e", "##iff", "##el"]
  assert bert.decode([101] + ids + [102, 0, 0]) == "hello eiffel tower, cafe!"
  assert bert.encode("") == []
  assert bert.encode_batch(["a b", "Tower"]) == [[1037, 1038], [3578]]


def test_bert_save_load_pickle(bert, tmp_path):
  path = bert.save(str(tmp_path / "tok" / "tokenizer.json"))
  again = tokenizers.WordPieceTokenizer(path)
  assert again.encode("the golden gate bridge") == bert.encode("the golden gate bridge")
  assert len(again.encode("x " * 300)) == 300  # Truncation is off too.
  clone = pickle.loads(pickle.dumps(bert))
  assert clone.encode("mount fuji") == bert.encode("mount fuji") and clone.eos_id == 102
  vocab = tokenizers.WordPieceTokenizer(
      tokenizers.packaged_bert_vocab_dir() + "/vocab.txt")
  assert vocab.encode("Hello Eiffel Tower") == bert.encode("Hello Eiffel Tower")


def test_bert_from_a_model_folder(bert, tmp_path):
  packaged = tokenizers.packaged_bert_vocab_dir()
  text = "Hello Eiffel Tower, café!"
  # A folder with tokenizer.json (preferred) or only vocab.txt, e.g. a local HF model copy.
  assert tokenizers.load_tokenizer("bert", packaged).path.endswith("tokenizer.json")
  assert tokenizers.load_tokenizer("bert", packaged).encode(text) == bert.encode(text)
  own = tmp_path / "my_bert"
  own.mkdir()
  shutil.copy(f"{packaged}/vocab.txt", own / "vocab.txt")
  from_vocab = tokenizers.WordPieceTokenizer(str(own))
  assert from_vocab.encode(text) == bert.encode(text) and from_vocab.eos_id == 102
  # A cased model says so in tokenizer_config.json; this uncased vocabulary then lacks "H".
  (own / "tokenizer_config.json").write_text('{"do_lower_case": false}')
  assert tokenizers.WordPieceTokenizer(str(own)).encode("Hello") == [100]  # [UNK]
  with pytest.raises(TokenizerError, match="neither tokenizer.json nor vocab.txt"):
    tokenizers.load_tokenizer("bert", str(tmp_path))


def test_sentencepiece_train_save_load(tmp_path):
  texts = [f"the {c} {a} stands near the {p}" for c in ("red", "blue", "green", "old")
           for a in ("tower", "bridge", "church", "statue") for p in ("river", "sea", "park")]
  path = str(tmp_path / "sp.model")
  tok = tokenizers.train_sentencepiece(texts, path, vocab_size=60)
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 2, 3)
  assert 20 < tok.vocab_size <= 60
  ids = tok.encode("the red tower stands near the sea")
  assert tok.decode([tok.bos_id] + ids + [tok.eos_id, 0]) == "the red tower stands near the sea"
  loaded = tokenizers.load_tokenizer("sentencepiece", path)
  assert loaded.encode("blue bridge") == tok.encode("blue bridge")
  assert pickle.loads(pickle.dumps(loaded)).encode("old park") == tok.encode("old park")


def test_bad_tokenizer_inputs(tmp_path):
  with pytest.raises(TokenizerError, match="unknown tokenizer kind 'gpt'"):
    tokenizers.load_tokenizer("gpt")
  with pytest.raises(TokenizerError, match="does not exist"):
    tokenizers.WordPieceTokenizer(str(tmp_path / "none.json"))
  bad = tmp_path / "bad.model"
  bad.write_bytes(b"not a model")
  with pytest.raises(TokenizerError, match="not a sentencepiece model"):
    tokenizers.SentencePieceTokenizer(str(bad))
