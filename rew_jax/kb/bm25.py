"""BM25 over entity titles (bm25s): a lexical second retriever and the resolver's fuzzy step.

Parameters follow the OVEN baselines' BM25Okapi (k1=1.5, b=0.75, Robertson idf). Titles and
queries share one tokenisation: `normalize_name` (case, accents, punctuation), whitespace
split, and a crude plural fold ("kestrels" → "kestrel") so that a caption's plural still
finds the singular title. The index is saved next to the KB index and reopened memory-mapped.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

from rew_jax.kb.wiki6m import normalize_name

K1, B = 1.5, 0.75


def _fold(token: str) -> str:
  if len(token) > 3 and token.endswith("s") and not token.endswith(("ss", "us", "is")):
    return token[:-1]
  return token


def tokenize(text: str) -> list[str]:
  return [_fold(t) for t in normalize_name(text).split()]


class TitleBM25:
  """BM25 over the KB's titles; rows are KB rows."""

  def __init__(self, retriever, num: int):
    self._retriever, self.num = retriever, num

  @classmethod
  def build(cls, titles: Sequence[str], save_dir: str | None = None) -> "TitleBM25":
    import bm25s  # pylint: disable=g-import-not-at-top
    corpus = [tokenize(t) or ["_"] for t in titles]  # bm25s rejects empty documents.
    retriever = bm25s.BM25(k1=K1, b=B, method="robertson")
    retriever.index(corpus, show_progress=False)
    if save_dir:
      retriever.save(save_dir, show_progress=False)
      with open(os.path.join(save_dir, "rew_meta.json"), "w") as f:
        json.dump({"count": len(titles)}, f)
    return cls(retriever, len(titles))

  @classmethod
  def load(cls, save_dir: str) -> "TitleBM25":
    import bm25s  # pylint: disable=g-import-not-at-top
    with open(os.path.join(save_dir, "rew_meta.json")) as f:
      num = json.load(f)["count"]
    return cls(bm25s.BM25.load(save_dir, mmap=True, show_progress=False), num)

  @classmethod
  def open_or_build(cls, kb) -> "TitleBM25":
    save_dir = kb.path("bm25")
    try:
      index = cls.load(save_dir)
      if index.num == len(kb):
        return index
    except (OSError, ValueError, KeyError):
      pass
    os.makedirs(save_dir, exist_ok=True)
    return cls.build(kb.titles, save_dir)

  def search(self, texts: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores float32 [Q, k'], rows int64 [Q, k']) best first; rows -1 where nothing matched."""
    k = min(k, self.num)
    scores = np.zeros((len(texts), k), np.float32)
    rows = np.full((len(texts), k), -1, np.int64)
    vocab = self._retriever.vocab_dict
    queries = [[t for t in tokenize(text) if t in vocab] for text in texts]
    live = [i for i, q in enumerate(queries) if q]
    if live and k:
      docs, sc = self._retriever.retrieve([queries[i] for i in live], k=k, show_progress=False)
      docs, sc = np.asarray(docs), np.asarray(sc, np.float32)
      scores[live] = sc
      rows[live] = np.where(sc > 0, docs, -1)
    return scores, rows
