"""Name → entity id, for mapping an LLM's free-text answer back onto the KB.

The cascade stops at the first confident step and says which one answered:
  id          the answer is itself a Wikidata id of the KB ("Q42")
  exact       a title equal to the answer
  normalized  a title equal after normalisation (case, accents, punctuation)
  alias       a title whose "(…)"-less form equals the answer ("Mercury" → "Mercury (planet)")
  fuzzy       a BM25 hit whose normalised title is close by string similarity (typos, plurals)
  embedding   the nearest title embedding, above a cosine threshold and clear of the runner-up
  abstain     nothing confident (also when a name is ambiguous and the candidates do not
              settle it)
When several entities share the name ("Crimson Striped Falcon" → the aircraft and the
bird), the caller's candidate list (the retrieval candidates shown to the LLM) breaks the
tie; without one the resolver abstains instead of guessing.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Sequence

from rew_jax.kb.wiki6m import KIND_ALIAS, KIND_TITLE, base_name, normalize_name

_QID = re.compile(r"^Q[1-9]\d*$")


@dataclasses.dataclass(frozen=True)
class Resolution:
  entity_id: str | None
  row: int
  method: str
  score: float = 0.0

  @property
  def resolved(self) -> bool:
    return self.entity_id is not None


class NameResolver:
  """Resolves names against an `EntityKB`, optionally with BM25 and an embedding index."""

  def __init__(self, kb, *, bm25=None, encoder=None, searcher=None,
               fuzzy_threshold: float = 0.9, embed_threshold: float = 0.92,
               embed_margin: float = 0.02, bm25_k: int = 10):
    self.kb, self.bm25 = kb, bm25
    self.encoder, self.searcher = encoder, searcher
    self.fuzzy_threshold = fuzzy_threshold
    self.embed_threshold, self.embed_margin = embed_threshold, embed_margin
    self.bm25_k = bm25_k

  def _hit(self, row: int, method: str, score: float = 1.0) -> Resolution:
    return Resolution(self.kb.ids[row], row, method, float(score))

  def _pick(self, rows: Sequence[int], method: str, preferred: set[int],
            score: float = 1.0) -> Resolution | None:
    """One row → a hit; several → the single preferred one, else an ambiguous abstention."""
    rows = sorted(set(rows))
    if len(rows) == 1:
      return self._hit(rows[0], method, score)
    chosen = [r for r in rows if r in preferred]
    if len(chosen) == 1:
      return self._hit(chosen[0], method, score)
    if rows:
      return Resolution(None, -1, "abstain", 0.0)
    return None

  def resolve(self, name: str, candidates: Sequence[str] = ()) -> Resolution:
    """Maps `name` to an entity; `candidates` (entity ids) settle ambiguous names."""
    name = (name or "").strip().strip("\"'").strip()
    if not name:
      return Resolution(None, -1, "abstain")
    preferred = set()
    for qid in candidates:
      try:
        preferred.add(self.kb.row_of(qid))
      except KeyError:
        pass
    if _QID.match(name):
      try:
        return self._hit(self.kb.row_of(name), "id")
      except KeyError:
        pass
    norm = normalize_name(name)
    matches = self.kb.rows_by_name(norm, normalized=True)
    titles = [r for r, kind in matches if kind == KIND_TITLE]
    exact = [r for r in titles if self.kb.titles[r] == name]
    for rows, method in ((exact, "exact"), (titles, "normalized"),
                         ([r for r, kind in matches if kind == KIND_ALIAS], "alias")):
      if rows:
        return self._pick(rows, method, preferred)
    if self.bm25 is not None:
      hit = self._fuzzy(norm, name, preferred)
      if hit is not None:
        return hit
    if self.encoder is not None and self.searcher is not None:
      scores, rows = self.searcher.search(self.encoder.encode([name]), 2)
      top = float(scores[0, 0])
      second = float(scores[0, 1]) if scores.shape[1] > 1 else -1.0
      if top >= self.embed_threshold and top - second >= self.embed_margin:
        return self._hit(int(rows[0, 0]), "embedding", top)
    return Resolution(None, -1, "abstain")

  def _fuzzy(self, norm: str, name: str, preferred: set[int]) -> Resolution | None:
    _, rows = self.bm25.search([name], self.bm25_k)
    pool = {int(r) for r in rows[0] if r >= 0} | preferred
    scored = []
    for r in pool:
      title = self.kb.titles[r]
      sim = max(difflib.SequenceMatcher(None, norm, normalize_name(t)).ratio()
                for t in {title, base_name(title)})
      scored.append((sim, r))
    if not scored:
      return None
    best = max(s for s, _ in scored)
    if best < self.fuzzy_threshold:
      return None
    # Near-ties (within 0.01) are the same question as an ambiguous name.
    return self._pick([r for s, r in scored if s >= best - 0.01], "fuzzy", preferred, best)
