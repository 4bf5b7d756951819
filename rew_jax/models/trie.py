"""A prefix trie over tokenized entity names, stored as flat arrays for on-device decoding.

Layout (N nodes, root = 0, every other node has exactly one incoming edge):
  offsets[N + 1]  children of node n are the edges offsets[n] .. offsets[n+1]-1;
  labels[N - 1]   the token on edge e; edge e leads to child node e + 1;
  leaf_row[N]     for a node reached by EOS: the index of its name in the builder's input
                  (the first one when names tokenize identically); -1 elsewhere.
Children of a node are contiguous and sorted by token, so a decoding step needs only a
window of `max_fanout` entries per beam: memory is O(beams × max_fanout), independent of how
many names the trie holds.

The builder is vectorised numpy (lexicographic sort + first-difference per row) because a
Python dict-of-dicts over 6M names × ~10 tokens does not fit a reasonable time or memory.
"""

from __future__ import annotations

from typing import Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

DEAD = -1  # A node id meaning "left the trie"; every token is then disallowed.


@flax.struct.dataclass
class TokenTrie:
  offsets: jax.Array
  labels: jax.Array
  leaf_row: jax.Array
  max_fanout: int = flax.struct.field(pytree_node=False)

  @property
  def num_nodes(self) -> int:
    return int(self.offsets.shape[0]) - 1


def build_trie(sequences: Sequence[Sequence[int]], eos_id: int) -> TokenTrie:
  """Builds the trie of `sequences`, each terminated by `eos_id` (appended here)."""
  if not len(sequences):
    raise ValueError("cannot build a trie of zero names")
  lengths = np.array([len(s) for s in sequences], np.int64)
  if (lengths == 0).any():
    raise ValueError(f"sequence {int(np.argmin(lengths))} is empty")
  width = int(lengths.max()) + 1
  rows = np.full((len(sequences), width), -1, np.int64)
  for i, seq in enumerate(sequences):
    rows[i, :len(seq)] = seq
  if (rows == eos_id).any():
    raise ValueError(f"sequence {int(np.argmax((rows == eos_id).any(1)))} contains eos_id")
  rows[np.arange(len(rows)), lengths] = eos_id
  # Padding (-1) sorts before every token, so a prefix sorts before its extensions.
  order = np.lexsort(rows.T[::-1])
  rows = rows[order]
  differs = rows[1:] != rows[:-1]
  first_diff = np.where(differs.any(1), differs.argmax(1), width)  # width: duplicate row.
  first_diff = np.concatenate([[0], first_diff])

  node = np.full(rows.shape, -1, np.int64)
  labels, parents = [], []
  next_id = 1
  for d in range(width):
    present = rows[:, d] >= 0
    new = present & (first_diff <= d)
    ids = np.where(new, next_id + np.cumsum(new) - 1, 0)
    # Rows that share this prefix with the row above reuse its node: forward-fill.
    last_new = np.maximum.accumulate(np.where(new, np.arange(len(rows)), -1))
    node[:, d] = np.where(present, ids[np.maximum(last_new, 0)], -1)
    parent = node[:, d - 1] if d else np.zeros(len(rows), np.int64)
    labels.append(rows[new, d])
    parents.append(parent[new])
    next_id += int(new.sum())
  labels = np.concatenate(labels)
  parents = np.concatenate(parents)
  num_nodes = next_id
  # Children ids grow with their parent's id (rows are sorted), so edges are already
  # grouped by parent and sorted by token within a parent.
  counts = np.bincount(parents, minlength=num_nodes)
  offsets = np.concatenate([[0], np.cumsum(counts)])

  leaf_row = np.full(num_nodes, -1, np.int64)
  lengths_sorted = lengths[order]
  leaf_nodes = node[np.arange(len(rows)), lengths_sorted]
  # Iterate in reverse so that among identical names the earliest input index wins.
  for leaf, row in zip(leaf_nodes[::-1], order[::-1]):
    if leaf_row[leaf] == -1 or row < leaf_row[leaf]:
      leaf_row[leaf] = row
  return TokenTrie(
      offsets=jnp.asarray(offsets, jnp.int32),
      labels=jnp.asarray(labels, jnp.int32),
      leaf_row=jnp.asarray(leaf_row, jnp.int32),
      max_fanout=int(counts.max()))


def _window(trie: TokenTrie, nodes: jax.Array):
  """Edge indices, tokens and validity of each node's children, padded to max_fanout."""
  alive = nodes >= 0
  safe = jnp.where(alive, nodes, 0)
  start = trie.offsets[safe]
  count = jnp.where(alive, trie.offsets[safe + 1] - start, 0)
  slot = jnp.arange(trie.max_fanout, dtype=jnp.int32)
  edge = start[:, None] + slot
  valid = slot < count[:, None]
  tokens = trie.labels[jnp.clip(edge, 0, trie.labels.shape[0] - 1)]
  return edge, tokens, valid


def allowed_mask(trie: TokenTrie, nodes: jax.Array, vocab_size: int) -> jax.Array:
  """bool[B, vocab]: the tokens that keep each of the B beams inside the trie."""
  _, tokens, valid = _window(trie, nodes)
  rows = jnp.arange(nodes.shape[0])[:, None]
  target = jnp.where(valid, tokens, vocab_size)  # Out of range: dropped.
  mask = jnp.zeros((nodes.shape[0], vocab_size), bool)
  return mask.at[rows, target].set(True, mode="drop")


def advance(trie: TokenTrie, nodes: jax.Array, tokens: jax.Array) -> jax.Array:
  """The node reached from each of `nodes` by its token; DEAD where no such edge."""
  edge, labels, valid = _window(trie, nodes)
  match = valid & (labels == tokens[:, None])
  found = match.any(axis=1)
  child = jnp.take_along_axis(edge, match.argmax(axis=1)[:, None], axis=1)[:, 0] + 1
  return jnp.where(found, child, DEAD).astype(jnp.int32)


def save(trie: TokenTrie, path: str) -> None:
  with open(path, "wb") as f:
    np.savez(f, offsets=np.asarray(trie.offsets), labels=np.asarray(trie.labels),
             leaf_row=np.asarray(trie.leaf_row), max_fanout=np.asarray(trie.max_fanout))


def load(path: str) -> TokenTrie:
  with np.load(path) as z:
    return TokenTrie(offsets=jnp.asarray(z["offsets"]), labels=jnp.asarray(z["labels"]),
                     leaf_row=jnp.asarray(z["leaf_row"]), max_fanout=int(z["max_fanout"]))
