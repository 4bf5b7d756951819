"""From a model's generation to a KB entity id, three ways (`mapping.mode` in a config).

  rows   the prediction function already returns KB rows: KB-constrained decoding over the
         name trie (`decoding.constrained_beam_search`, `rows` = trie leaf rows = KB rows,
         valid by construction) or GER-ALD decoding with the in-graph code lookup
         (`decoding.ald_decode`, `rows`, -1 for an invalid code). Output key: `rows` int
         [B] or [B, R] (the first beam decides).
  codes  the prediction function returns generated ALD code tokens (`tokens` int [B, T] or
         [B, R, T], EOS-terminated) and the code table maps them back on the host; an
         invalid code maps to no entity. With `first_valid`, the best beam whose code exists
         decides (GER-ALD's "cheaply constrained" variant).
  text   free text (`tokens` to be decoded by the tokenizer, or `text` strings) goes through
         a name resolver: the KB resolver cascade (exact / normalised / alias / BM25-fuzzy /
         embedding, abstaining when unsure) or `bm25`, the OVEN baselines' unconditional
         BM25 top-1 over titles.

A mapper is `mapper(outputs) -> list[Mapped]` on host numpy outputs of one batch; `Mapped`
carries the entity id (None: no entity) and what to show in the per-example table.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from rew_jax.data import tokenizers
from rew_jax.errors import ConfigError

EOS_ID = tokenizers.BERT_EOS_ID  # BERT [SEP], the GiT decoder's EOS.
MODES = ("rows", "codes", "text")


class Mapped(NamedTuple):
  entity_id: str | None
  info: dict[str, Any]


def _first_beam(array: np.ndarray, ndim: int) -> np.ndarray:
  """[B, R, ...] → [B, ...] (beam 0); arrays without a beam axis pass through."""
  return array[:, 0] if array.ndim == ndim + 1 else array


def _strip(tokens: Sequence[int], eos_id: int) -> tuple[int, ...] | None:
  """Tokens before the first EOS, or None when the sequence never ends (not a code)."""
  out = []
  for t in tokens:
    t = int(t)
    if t == eos_id:
      return tuple(out)
    out.append(t)
  return None


class RowMapper:
  """`rows` (KB row indices, -1 for none) → entity ids."""

  def __init__(self, entity_ids: Sequence[str], *, key: str = "rows"):
    self.entity_ids, self.key = entity_ids, key

  def __call__(self, outputs: Mapping[str, np.ndarray]) -> list[Mapped]:
    rows = _first_beam(np.asarray(outputs[self.key]), 1)
    # The deciding beam's generated tokens (before EOS), when the prediction returns them.
    tokens = (_first_beam(np.asarray(outputs["tokens"]), 2) if "tokens" in outputs
              else [None] * len(rows))
    out = []
    for row, seq in zip(rows.tolist(), tokens):
      valid = 0 <= row < len(self.entity_ids)
      info = {"row": row}
      if seq is not None:
        body = _strip(seq, EOS_ID)
        info["tokens"] = " ".join(map(str, body if body is not None else seq))
      out.append(Mapped(self.entity_ids[row] if valid else None, info))
    return out


class CodeMapper:
  """Generated ALD code tokens → entity ids through the code table (`ald_codes.npz`, KB row
  order; `codes` may also be the bare int array [N, W] of codes)."""

  def __init__(self, codes, entity_ids: Sequence[str], *, key: str = "tokens",
               eos_id: int = EOS_ID, first_valid: bool = False):
    table_ids = getattr(codes, "ids", None)
    codes = np.asarray(getattr(codes, "codes", codes))
    if len(codes) != len(entity_ids):
      raise ConfigError(f"{len(codes)} ALD codes for {len(entity_ids)} entities: the code table "
                        "does not belong to this KB")
    if table_ids is not None:  # A spot check of the rows' order (a full one reads 6M ids).
      for row in np.linspace(0, len(codes) - 1, min(len(codes), 1000)).astype(int).tolist():
        if table_ids[row].decode("utf-8") != entity_ids[row]:
          raise ConfigError(f"ALD code row {row} is entity {table_ids[row].decode()!r} but KB "
                            f"row {row} is {entity_ids[row]!r}: the code table belongs to "
                            "another KB (rebuild it)")
    self.entity_ids, self.key, self.eos_id = entity_ids, key, eos_id
    self.first_valid = first_valid
    self.row_of = {}
    for row, code in enumerate(codes):
      self.row_of.setdefault(_strip(code, eos_id), row)

  def _lookup(self, seq) -> tuple[int, tuple[int, ...] | None]:
    code = _strip(seq, self.eos_id)
    return self.row_of.get(code, -1), code

  def __call__(self, outputs: Mapping[str, np.ndarray]) -> list[Mapped]:
    tokens = np.asarray(outputs[self.key])
    if tokens.ndim == 2:
      tokens = tokens[:, None]
    out = []
    for beams in tokens:
      beams = beams if self.first_valid else beams[:1]
      found = [self._lookup(seq) for seq in beams]
      row, code = next(((r, c) for r, c in found if r >= 0), found[0])
      code_str = "" if code is None else " ".join(map(str, code))
      out.append(Mapped(self.entity_ids[row] if row >= 0 else None, {"row": row, "code": code_str}))
    return out


class BM25Top1:
  """The OVEN baselines' mapping: the best BM25 title match, whatever its score."""

  def __init__(self, bm25, entity_ids: Sequence[str]):
    self.bm25, self.entity_ids = bm25, entity_ids

  def resolve(self, name: str, candidates: Sequence[str] = ()):
    del candidates
    _, rows = self.bm25.search([name], 1)
    row = int(rows[0, 0]) if rows.shape[1] else -1
    if row < 0:
      return _Resolution(None, "abstain")
    return _Resolution(self.entity_ids[row], "bm25")


class _Resolution(NamedTuple):
  entity_id: str | None
  method: str


class TextMapper:
  """Free text → entity ids through a resolver (`resolver.resolve(name)` → .entity_id)."""

  def __init__(self, resolver, *, tokenizer=None, key: str = "tokens", eos_id: int = EOS_ID):
    self.resolver, self.tokenizer, self.key, self.eos_id = resolver, tokenizer, key, eos_id

  def texts(self, outputs: Mapping[str, np.ndarray]) -> list[str]:
    if "text" in outputs:
      return [str(t) for t in outputs["text"]]
    if self.tokenizer is None:
      raise ConfigError("mapping mode 'text' on token outputs needs a tokenizer")
    tokens = _first_beam(np.asarray(outputs[self.key]), 2)
    out = []
    for seq in tokens:
      body = _strip(seq, self.eos_id)
      ids = [int(t) for t in (seq if body is None else body) if int(t) != 0]
      out.append(self.tokenizer.decode(ids))
    return out

  def __call__(self, outputs: Mapping[str, np.ndarray]) -> list[Mapped]:
    out = []
    for text in self.texts(outputs):
      res = self.resolver.resolve(text)
      out.append(Mapped(res.entity_id, {"text": text, "method": res.method}))
    return out


def from_config(mode: str, *, kb=None, kb_dir: str | None = None, resolver: str = "cascade",
                tokenizer=None, tokenizer_kind: str = "bert", tokenizer_path: str | None = None,
                first_valid: bool = False, key: str | None = None, eos_id: int = EOS_ID):
  """A mapper from config values; the KB (an `EntityKB`) is opened from `kb_dir` if needed."""
  if mode not in MODES:
    raise ConfigError(f"mapping.mode {mode!r}: expected one of {', '.join(MODES)}")
  if kb is None:
    if not kb_dir:
      raise ConfigError(f"mapping.mode {mode!r} needs mapping.kb_dir (a KB index directory)")
    from rew_jax.kb.wiki6m import EntityKB  # pylint: disable=g-import-not-at-top
    kb = EntityKB(kb_dir)
  if mode == "rows":
    return RowMapper(kb.ids, key=key or "rows")
  if mode == "codes":
    from rew_jax.data import code_table  # pylint: disable=g-import-not-at-top
    return CodeMapper(code_table.load_codes(kb.path(code_table.FILE_NAME)), kb.ids,
                      key=key or "tokens",
                      eos_id=eos_id, first_valid=first_valid)
  from rew_jax.kb.bm25 import TitleBM25  # pylint: disable=g-import-not-at-top
  bm25 = TitleBM25.open_or_build(kb)
  if resolver == "bm25":
    name_resolver = BM25Top1(bm25, kb.ids)
  elif resolver == "cascade":
    from rew_jax.kb.resolver import NameResolver  # pylint: disable=g-import-not-at-top
    name_resolver = NameResolver(kb, bm25=bm25)
  else:
    raise ConfigError(f"mapping.resolver {resolver!r}: expected 'cascade' or 'bm25'")
  if tokenizer is None:
    from rew_jax.data.tokenizers import load_tokenizer  # pylint: disable=g-import-not-at-top
    tokenizer = load_tokenizer(tokenizer_kind, tokenizer_path)
  return TextMapper(name_resolver, tokenizer=tokenizer, key=key or "tokens", eos_id=eos_id)
