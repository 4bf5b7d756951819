"""The array trie used by KB-constrained decoding."""


import jax
import numpy as np
import pytest

from rew_jax.models import trie as trie_lib

EOS = 9
NAMES = [[1, 2, 3], [1, 2], [1, 4], [5], [1, 2, 3], [6, 2, 3, 7]]


def _walk(trie, seq):
  nodes = np.zeros(1, np.int32)
  for tok in seq:
    nodes = trie_lib.advance(trie, nodes, np.array([tok], np.int32))
  return int(nodes[0])


def test_every_name_reaches_its_leaf_and_nothing_else_does():
  trie = trie_lib.build_trie(NAMES, EOS)
  for i, name in enumerate(NAMES):
    leaf = _walk(trie, name + [EOS])
    assert leaf > 0
    # Duplicates ([1,2,3] twice) map to the first occurrence.
    assert int(trie.leaf_row[leaf]) == NAMES.index(name), (i, name)
  # Sequences that are not names (or are prefixes without EOS) never reach a leaf.
  for seq in ([1, EOS], [2, EOS], [1, 2, 3, 4, EOS], [6, 2, EOS], [5, 5]):
    node = _walk(trie, seq)
    assert node == trie_lib.DEAD or int(trie.leaf_row[node]) == -1, seq


def test_allowed_mask_matches_brute_force_prefix_sets():
  trie = trie_lib.build_trie(NAMES, EOS)
  vocab = 10
  terminated = [tuple(n) + (EOS,) for n in NAMES]
  prefixes = {p[:k] for p in terminated for k in range(len(p))}
  for prefix in sorted(prefixes):
    node = _walk(trie, prefix)
    mask = np.asarray(trie_lib.allowed_mask(trie, np.array([node], np.int32), vocab))[0]
    expected = {t[len(prefix)] for t in terminated if t[:len(prefix)] == prefix}
    assert set(np.flatnonzero(mask)) == expected, prefix
  dead = np.asarray(trie_lib.allowed_mask(trie, np.array([trie_lib.DEAD], np.int32), vocab))
  assert not dead.any()


def test_structure_and_fanout():
  trie = trie_lib.build_trie([[3, 1], [3, 2], [3, 0], [4]], eos_id=7)
  assert trie.max_fanout == 3  # Node "3" has children 0, 1, 2.
  offsets, labels = np.asarray(trie.offsets), np.asarray(trie.labels)
  for n in range(trie.num_nodes):
    kids = labels[offsets[n]:offsets[n + 1]]
    assert list(kids) == sorted(kids)
  assert trie.num_nodes == 1 + 2 + 3 + 1 + 3  # root, {3,4}, {0,1,2}, EOS after 4, 3 EOS.


def test_jit_batched_and_random_against_python_trie():
  rng = np.random.default_rng(0)
  names = [list(rng.integers(1, 20, size=rng.integers(1, 6))) for _ in range(300)]
  trie = trie_lib.build_trie(names, eos_id=0)
  step = jax.jit(trie_lib.advance)
  seqs = [n + [0] for n in names[:50]] + [list(rng.integers(0, 20, 4)) for _ in range(50)]
  width = max(map(len, seqs))
  nodes = np.zeros(len(seqs), np.int32)
  for pos in range(width):
    toks = np.array([s[pos] if pos < len(s) else 0 for s in seqs], np.int32)
    nodes = np.where([pos < len(s) for s in seqs], step(trie, nodes, toks), nodes)
  name_set = {tuple(n) for n in names}
  for seq, node in zip(seqs, nodes):
    is_name = seq[-1] == 0 and tuple(seq[:-1]) in name_set
    reached = node >= 0 and int(trie.leaf_row[node]) >= 0
    assert reached == is_name, seq


def test_save_load_round_trip(tmp_path):
  trie = trie_lib.build_trie(NAMES, EOS)
  trie_lib.save(trie, str(tmp_path / "t.npz"))
  back = trie_lib.load(str(tmp_path / "t.npz"))
  assert back.max_fanout == trie.max_fanout
  for a, b in zip(jax.tree.leaves(trie), jax.tree.leaves(back)):
    np.testing.assert_array_equal(a, b)


def test_bad_input():
  with pytest.raises(ValueError, match="zero names"):
    trie_lib.build_trie([], 1)
  with pytest.raises(ValueError, match="empty"):
    trie_lib.build_trie([[2], []], 1)
  with pytest.raises(ValueError, match="eos_id"):
    trie_lib.build_trie([[2, 1, 3]], 1)
