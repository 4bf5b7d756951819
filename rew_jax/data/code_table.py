"""The ALD codes file (`ald_codes.npz`, written next to the KB index by `rew_jax.kb.codes`):
entity ids and their codes in KB row order. Training reads it (`data.tasks`, entity.target
'ald') and so does evaluation (`evaluators.mapping`, mode 'codes'); one format for both.

  ids      bytes [N]        entity ids (Wikidata ids), KB row order
  codes    int32 [N, W]     code tokens, EOS ([SEP]), then PAD=0
  length   int              the number of rarest name tokens per code (GER-ALD: 3)
  eos_id   int              the EOS id that ends every code
  seed     int              the seed of the collision order
  format   str              FORMAT
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np

from rew_jax import storage
from rew_jax.data import tokenizers
from rew_jax.errors import UserError

PAD_ID, SEP_ID = tokenizers.BERT_PAD_ID, tokenizers.BERT_EOS_ID
FORMAT = "rew_jax.ald_codes/2"
FILE_NAME = "ald_codes.npz"


class CodesError(UserError):
  """An ALD codes file that cannot be used (missing, another format, another KB)."""


class CodeTable:
  """The contents of ald_codes.npz: entity ids and their codes, in KB row order."""

  def __init__(self, ids: np.ndarray, codes: np.ndarray, length: int, eos_id: int = SEP_ID):
    self.ids = np.asarray(ids)          # bytes [N]
    self.codes = np.asarray(codes)      # int32 [N, W]: tokens, EOS, PAD
    self.length, self.eos_id = int(length), int(eos_id)
    if len(self.ids) != len(self.codes):
      raise CodesError(f"{len(self.ids)} entity ids for {len(self.codes)} codes")
    self._order = np.argsort(self.ids, kind="stable")
    self._sorted_ids = self.ids[self._order]

  def __len__(self) -> int:
    return len(self.ids)

  @property
  def max_tokens(self) -> int:
    """The longest code, in tokens (EOS not counted): decoding needs this + 1 steps."""
    return int(((self.codes != PAD_ID).sum(1) - 1).max())

  def tokens(self, row: int) -> list[int]:
    """Row `row`'s code tokens (no EOS)."""
    code = self.codes[row]
    return [int(t) for t in code[:int(np.argmax(code == self.eos_id))]]

  def rows_of(self, entity_ids: Sequence[str]) -> np.ndarray:
    """int64 [M]: the KB row of each entity id, -1 for an id the table does not hold."""
    if not len(entity_ids):
      return np.zeros(0, np.int64)
    keys = np.array([e.encode("utf-8") for e in entity_ids])  # Own width: never truncated.
    pos = np.clip(np.searchsorted(self._sorted_ids, keys), 0, len(self) - 1)
    return np.where(self._sorted_ids[pos] == keys, self._order[pos], -1)


def save_codes(path: str, ids: Sequence[str], codes: np.ndarray, *, length: int, seed: int,
               eos_id: int = SEP_ID) -> str:
  """Writes ald_codes.npz atomically (local or gs://)."""
  if len(ids) != len(codes):
    raise ValueError(f"{len(ids)} ids for {len(codes)} codes")
  buf = io.BytesIO()
  np.savez(buf, ids=np.array([i.encode("utf-8") for i in ids], dtype=bytes),
           codes=np.asarray(codes, np.int32), length=np.int32(length), eos_id=np.int32(eos_id),
           seed=np.int64(seed), format=np.array(FORMAT))
  return storage.write_bytes(path, buf.getvalue())


def load_codes(path: str) -> CodeTable:
  """Reads ald_codes.npz (local or gs://); a missing or foreign file is a CodesError."""
  if not storage.isfile(path):
    raise CodesError(f"ALD codes file {path!r} does not exist: the KB build writes it "
                     f"({FILE_NAME} in the KB index directory; `python -m rew_jax candidates` "
                     "with candidates.artifacts.codes=True)")
  try:
    with np.load(io.BytesIO(storage.read_bytes(path))) as z:
      fmt = str(z["format"]) if "format" in z else "(none)"
      if fmt != FORMAT:
        raise CodesError(f"ALD codes file {path!r} has format {fmt}, expected {FORMAT}: "
                         "rebuild it (delete it and rerun the KB build)")
      return CodeTable(ids=z["ids"], codes=z["codes"], length=int(z["length"]),
                       eos_id=int(z["eos_id"]))
  except (OSError, ValueError, KeyError) as e:
    raise CodesError(f"ALD codes file {path!r} cannot be read: {e}") from None
