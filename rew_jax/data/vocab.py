"""A trimmed vocabulary: the tokenizer ids a corpus uses, for a model's embedding and output.

    ids = vocab.build_ids(texts, tokenizer)           # sorted, the special ids included
    vocab.save_ids(ids, "W/vocab_ids.npy")
    config.model.vocab_ids = "W/vocab_ids.npy"        # GiT embeds and predicts only these

A small model on a small corpus spends most of its output layer on words it never meets:
the demo world's texts use ~1 k of BERT-uncased's 30 522 ids, and the 30 522-way softmax
is a third of a demo train step (measured: 0.53 s with the full vocabulary, 0.35 s with
4 096 ids). The model keeps reading and returning tokenizer ids, so tokenizers, name tries,
records and decoding are unchanged: inputs map to the kept rows (any other id reads as the
tokenizer's [UNK]), and decoding sees the other ids as impossible. Trimming is a subset of
the same tokenizer, not a new one, so no training data is re-tokenized and a pretrained
GiT's rows can be sliced into it (`hf_git` loading does so).

The file is a numpy int32 array (`np.save`) of sorted unique ids; it must hold the
tokenizer's PAD, BOS, EOS and UNK ids.
"""

from __future__ import annotations

import functools
import os
from typing import Iterable

import numpy as np

from rew_jax.data import tokenizers
from rew_jax.errors import ConfigError

FILE_NAME = "vocab_ids.npy"
BERT_UNK_ID = 100


def special_ids(tok: tokenizers.Tokenizer) -> list[int]:
  """PAD, BOS, EOS and UNK of `tok`: always kept."""
  unk = BERT_UNK_ID if tok.kind == "bert" else 1  # tokenizers.py: sentencepiece UNK=1.
  return [tok.pad_id, tok.bos_id, tok.eos_id, unk]


def build_ids(texts: Iterable[str], tok: tokenizers.Tokenizer, batch: int = 4096
              ) -> np.ndarray:
  """Sorted unique int32 ids of `texts` under `tok`, with its special ids."""
  seen = set(special_ids(tok))
  chunk: list[str] = []

  def flush():
    for ids in tok.encode_batch(chunk):
      seen.update(ids)
    chunk.clear()

  for text in texts:
    if text:
      chunk.append(text)
      if len(chunk) >= batch:
        flush()
  flush()
  return np.array(sorted(seen), np.int32)


def save_ids(ids: np.ndarray, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp.npy"
  np.save(tmp, np.asarray(ids, np.int32))
  os.replace(tmp, path)
  return path


@functools.lru_cache(maxsize=8)
def load_ids(path: str, tokenizer_size: int) -> tuple[int, ...]:
  """The kept ids of `path`, checked against a tokenizer of `tokenizer_size` ids."""
  if not os.path.isfile(path):
    raise ConfigError(f"config.model.vocab_ids: {path!r} does not exist (a {FILE_NAME} "
                      "written by rew_jax.data.vocab.save_ids)")
  try:
    ids = np.load(path, allow_pickle=False)
  except (ValueError, OSError) as e:
    raise ConfigError(f"config.model.vocab_ids: {path}: not a numpy id array ({e})") from None
  if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer) or not len(ids):
    raise ConfigError(f"config.model.vocab_ids: {path}: expected a 1-D integer array of ids, "
                      f"got {ids.dtype}{list(ids.shape)}")
  if np.any(np.diff(ids) <= 0) or ids[0] < 0 or ids[-1] >= tokenizer_size:
    raise ConfigError(f"config.model.vocab_ids: {path}: ids must be sorted, unique and in "
                      f"[0, {tokenizer_size}) (model.vocab_size)")
  return tuple(int(i) for i in ids)


def compact_table(ids: tuple[int, ...], tokenizer_size: int, unk_id: int = BERT_UNK_ID
                  ) -> np.ndarray:
  """int32 [tokenizer_size]: the kept row of each tokenizer id; dropped ids → UNK's row."""
  ids_arr = np.asarray(ids, np.int32)
  unk_rows = np.flatnonzero(ids_arr == unk_id)
  if not len(unk_rows):
    raise ConfigError(f"the trimmed vocabulary lacks the [UNK] id {unk_id}")
  table = np.full((tokenizer_size,), unk_rows[0], np.int32)
  table[ids_arr] = np.arange(len(ids_arr), dtype=np.int32)
  return table
