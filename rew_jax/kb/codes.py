"""GER-ALD entity codes and the tokenized-name trie, both saved next to the KB index.

ALD (atomic, lexical, discriminative) code of an entity, as in GER-ALD: tokenize its name
with the decoder's BERT-uncased vocabulary, rank the distinct name tokens by how often they
occur over all entity names (rarest first, earlier position breaking ties) and keep the
`length` rarest, followed by an end marker ([SEP]). Codes must be unique over the KB: when a
code is already taken (entities are served in KB row order, so the first keeps the plain
code) its last slot is replaced by the entity's further name tokens, in rank order; if the
name has no unused token left, by seeded random tokens, widening to earlier slots only if a
whole slot's vocabulary is exhausted.

Files written in the KB index directory:
  ald_codes.npz    codes int32 [N, length + 1] (EOS after the code, PAD=0 after EOS), lengths
  name_trie.npz    `trie.save` of the names' tokens (no [CLS]; EOS=[SEP] appended by the trie)
  code_trie.npz    the same over the ALD codes, for decoding codes under a KB constraint
"""

from __future__ import annotations

import itertools
import os
from typing import Sequence

import numpy as np

from rew_jax.data import tokenizers
from rew_jax.models import trie as trie_lib

# The decoder's special ids; [UNK] and [MASK] are BERT-uncased's, which only this module uses.
PAD_ID, CLS_ID, SEP_ID = tokenizers.BERT_PAD_ID, tokenizers.BERT_BOS_ID, tokenizers.BERT_EOS_ID
UNK_ID, MASK_ID = 100, 103
FIRST_WORD_ID = 999  # BERT uncased: ids below are [PAD], [unused*], [UNK], [CLS], ... .


def tokenize_names(tokenizer, names: Sequence[str]) -> list[list[int]]:
  """Name → token ids without [CLS]/[SEP]; a name that tokenizes to nothing becomes [UNK]."""
  out = []
  for enc in tokenizer.encode_batch(list(names), add_special_tokens=False):
    ids = [i for i in enc.ids if i not in (CLS_ID, SEP_ID, PAD_ID)]
    out.append(ids or [UNK_ID])
  return out


def ald_codes(names: Sequence[Sequence[int]], *, length: int = 3, vocab_size: int = 30522,
              seed: int = 0, eos_id: int = SEP_ID) -> np.ndarray:
  """int32 [N, length + 1]: one unique code per tokenized name (see the module docstring)."""
  flat = np.fromiter(itertools.chain.from_iterable(names), np.int64)
  counts = np.bincount(flat, minlength=vocab_size)
  rng = np.random.default_rng(seed)
  used: set[tuple[int, ...]] = set()
  codes = np.full((len(names), length + 1), PAD_ID, np.int32)
  for row, name in enumerate(names):
    distinct = list(dict.fromkeys(int(t) for t in name))  # First position order.
    ranked = sorted(distinct, key=counts.__getitem__)  # Stable: position breaks ties.
    code = tuple(ranked[:length])
    if code in used:
      code = _fix_collision(code, ranked[length:], used, rng, length, vocab_size)
    used.add(code)
    codes[row, :len(code)] = code
    codes[row, len(code)] = eos_id
  return codes


def _fix_collision(code, spare, used, rng, length, vocab_size):
  """A free code: replace (or, for short codes, append) the last slot, then go random."""
  head = code[:-1] if len(code) == length else code
  for token in spare:
    if head + (token,) not in used:
      return head + (token,)
  # Random tokens for the trailing slots; widen to earlier slots only when a slot's whole
  # vocabulary is taken for this prefix (practically never: ~29.5k choices per slot).
  for keep in range(len(head), -1, -1):
    prefix = head[:keep]
    width = length - keep
    for _ in range(4 * (vocab_size - FIRST_WORD_ID)):
      tail = tuple(int(t) for t in rng.integers(FIRST_WORD_ID, vocab_size, size=width))
      if prefix + tail not in used:
        return prefix + tail
  raise RuntimeError("no free ALD code left; increase the code length")


def code_tokens(codes: np.ndarray, eos_id: int = SEP_ID) -> list[list[int]]:
  """Rows of `codes` without their EOS and padding."""
  out = []
  for row in codes:
    end = int(np.argmax(row == eos_id))
    out.append([int(t) for t in row[:end]])
  return out


def build_name_artifacts(kb, tokenizer, *, length: int = 3, seed: int = 0,
                         vocab_size: int | None = None) -> dict[str, str]:
  """Writes ald_codes.npz, name_trie.npz and code_trie.npz next to the KB index."""
  vocab_size = vocab_size or tokenizer.get_vocab_size()
  names = tokenize_names(tokenizer, kb.titles)
  codes = ald_codes(names, length=length, vocab_size=vocab_size, seed=seed)
  paths = {k: kb.path(f"{k}.npz") for k in ("ald_codes", "name_trie", "code_trie")}
  with open(paths["ald_codes"] + ".tmp", "wb") as f:
    np.savez(f, codes=codes, lengths=(codes != PAD_ID).sum(1).astype(np.int32) - 1)
  os.replace(paths["ald_codes"] + ".tmp", paths["ald_codes"])
  for key, seqs in (("name_trie", names), ("code_trie", code_tokens(codes))):
    trie_lib.save(trie_lib.build_trie(seqs, SEP_ID), paths[key] + ".tmp")
    os.replace(paths[key] + ".tmp", paths[key])
  return paths


def load_codes(path: str) -> np.ndarray:
  with np.load(path) as z:
    return z["codes"]
