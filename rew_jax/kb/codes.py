"""GER-ALD entity codes and the tokenized-name trie, both saved next to the KB index.

ALD (atomic, lexical, discriminative) code of an entity, built as GER-ALD's
`prepare_ald_codes.py` (google-research/scenic, projects/gerald) builds it:
  1. tokenize every name with the decoder's BERT-uncased vocabulary (no [CLS]/[SEP]) and
     count each token's occurrences over all the KB's names;
  2. an entity's code is its `length` (3) rarest name tokens, rarest first (a tie keeps name
     order; a token repeated in the name may fill two slots, as in scenic), then an end slot;
     a name of fewer tokens gives a shorter code;
  3. entities are visited in a seeded random order; the first to claim a code keeps it. A
     later entity whose code is taken writes into the slot after its code's last token (the
     end slot of a full code) its further name tokens, one at a time in rank order, until
     the code is free; failing that, random word pieces in that slot.
Deviations from scenic, each for a one-to-one code ↔ entity map: scenic gives up after 3
random draws and keeps a duplicate code, here drawing goes on until the code is free (an
error after `max_random_draws`); random tokens are word pieces only (ids ≥ 999), never
[SEP], [MASK] or [unused*]; and every code is followed by EOS ([SEP]), also a code whose end
slot holds a collision token (scenic's 4-slot array has no EOS there), so that codes, names
and their tries share one EOS-terminated form: decoding a code takes at most `length` + 2
steps.

Files written in the KB index directory:
  ald_codes.npz    `ids` bytes [N] (entity ids, KB row order), `codes` int32 [N, length + 2]
                   (code tokens, EOS, then PAD=0), `length`, `eos_id`, `seed`, `format`:
                   the one file that training (`data.tasks`, entity.target='ald') and
                   evaluation (`evaluators.mapping`, mode 'codes') read
  name_trie.npz    `trie.save` of the names' tokens (no [CLS]; EOS=[SEP] appended by the trie)
  code_trie.npz    the same over the ALD codes, for decoding codes under a KB constraint
"""

from __future__ import annotations

import itertools
import os
from typing import Sequence

import numpy as np

from rew_jax.data import code_table
from rew_jax.data import tokenizers
from rew_jax.models import trie as trie_lib

# The file's reader and writer live in rew_jax.data (training reads it too).
CodeTable, load_codes, save_codes = (code_table.CodeTable, code_table.load_codes,
                                     code_table.save_codes)

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


def rank_tokens(name: Sequence[int], counts: np.ndarray) -> list[int]:
  """The name's tokens, rarest first over `counts`; ties keep name order (stable)."""
  return [int(name[p]) for p in sorted(range(len(name)), key=lambda p: counts[name[p]])]


def ald_codes(names: Sequence[Sequence[int]], *, length: int = 3, vocab_size: int = 30522,
              seed: int = 0, eos_id: int = SEP_ID, max_random_draws: int = 100_000,
              stats: dict[str, int] | None = None) -> np.ndarray:
  """int32 [N, length + 2]: one unique code per tokenized name, EOS-terminated and 0-padded
  (see the module docstring). `stats` (if given) receives how many codes needed a further
  name token (`by_name_token`) or a random one (`by_random_token`)."""
  if not len(names):
    raise ValueError("no names to code")
  flat = np.fromiter(itertools.chain.from_iterable(names), np.int64)
  if flat.size and (flat.min() < 0 or flat.max() >= vocab_size):
    raise ValueError(f"token ids must lie in [0, {vocab_size}); got {flat.min()}..{flat.max()}")
  counts = np.bincount(flat, minlength=vocab_size)
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(names))
  taken: set[tuple[int, ...]] = set()
  codes = np.full((len(names), length + 2), PAD_ID, np.int32)
  fixed = {"by_name_token": 0, "by_random_token": 0}
  for row in order.tolist():
    if not len(names[row]):
      raise ValueError(f"name {row} has no tokens (tokenize_names gives such names [UNK])")
    ranked = rank_tokens(names[row], counts)
    code = tuple(ranked[:length])
    if code in taken:
      # The slot after the code's last token: further name tokens, then random word pieces.
      head = code
      for token in ranked[length:]:
        code = head + (token,)
        if code not in taken:
          fixed["by_name_token"] += 1
          break
      else:
        fixed["by_random_token"] += 1
        for _ in range(max_random_draws):
          code = head + (int(rng.integers(FIRST_WORD_ID, vocab_size)),)
          if code not in taken:
            break
        else:
          raise RuntimeError(f"no free ALD code for name {row} after {max_random_draws} "
                             "random draws")
    taken.add(code)
    codes[row, :len(code)] = code
    codes[row, len(code)] = eos_id
  if stats is not None:
    stats.update(fixed)
  return codes


def code_tokens(codes: np.ndarray, eos_id: int = SEP_ID) -> list[list[int]]:
  """Rows of `codes` without their EOS and padding."""
  out = []
  for row in np.asarray(codes):
    end = int(np.argmax(row == eos_id))
    out.append([int(t) for t in row[:end]])
  return out


def build_name_artifacts(kb, tokenizer, *, length: int = 3, seed: int = 0,
                         vocab_size: int | None = None,
                         stats: dict[str, int] | None = None) -> dict[str, str]:
  """Writes ald_codes.npz, name_trie.npz and code_trie.npz next to the KB index; returns
  their paths (`stats`: see `ald_codes`)."""
  vocab_size = vocab_size or tokenizer.get_vocab_size()
  names = tokenize_names(tokenizer, kb.titles)
  codes = ald_codes(names, length=length, vocab_size=vocab_size, seed=seed, stats=stats)
  paths = {k: kb.path(f"{k}.npz") for k in ("ald_codes", "name_trie", "code_trie")}
  code_table.save_codes(paths["ald_codes"], [kb.ids[i] for i in range(len(kb))], codes,
                        length=length, seed=seed)
  for key, seqs in (("name_trie", names), ("code_trie", code_tokens(codes))):
    trie_lib.save(trie_lib.build_trie(seqs, SEP_ID), paths[key] + ".tmp")
    os.replace(paths[key] + ".tmp", paths[key])
  return paths
