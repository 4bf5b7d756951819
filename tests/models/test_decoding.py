"""Greedy, beam and constrained decoding against brute force on a tiny vocabulary."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gitcase import random_params, tiny_config
from rew_jax.models import trie as trie_lib
from rew_jax.models import decoding, git

PAD, BOS, EOS = 0, 1, 2
VOCAB = 8
EMIT = list(range(2, VOCAB))  # Tokens the decoder may produce (PAD and BOS never).
MAX_LEN = 3


@pytest.fixture(scope="module")
def small():
  """A tiny GiT over 8 tokens with a sharpened output layer (no near-ties)."""
  model = git.GiT(tiny_config(vocab_size=VOCAB, max_prompt_len=3, max_target_len=4,
                              vit=dict(depth=1), decoder=dict(num_layers=1)))
  images = jax.random.normal(jax.random.key(4), (2, 32, 32, 3))
  prompts = jnp.array([[5, 6, 7], [3, 0, 0]], jnp.int32)
  params = random_params(model, images, prompts, jnp.zeros((2, 4), jnp.int32), seed=1)
  params["params"]["head"]["kernel"] = params["params"]["head"]["kernel"] * 10.0
  return model, params, images, prompts


@pytest.fixture(scope="module")
def brute(small):
  """Per-step log-probs from the full (no-cache) forward: l1[b,a] = log p(a),
  l2[b,a,c] = log p(c|a), l3[b,a,c,d] = log p(d|a,c)."""
  model, params, images, prompts = small
  pairs = np.array(list(itertools.product(range(VOCAB), repeat=2)))
  n = len(pairs)
  targets = np.concatenate([np.full((n, 1), BOS), pairs], axis=1).astype(np.int32)
  targets[targets == PAD] = 3  # Rows with PAD are never read; keep them unmasked.
  fwd = jax.jit(model.apply)
  l1, l2, l3 = np.zeros((2, VOCAB)), np.zeros((2, VOCAB, VOCAB)), np.zeros((2,) + (VOCAB,) * 3)
  for b in range(2):
    logits = fwd(params, jnp.repeat(images[b:b + 1], n, 0), jnp.repeat(prompts[b:b + 1], n, 0),
                 jnp.asarray(targets))
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    for (a, c), lp in zip(pairs, logp):
      l1[b] = lp[0]
      l2[b, a] = lp[1]
      l3[b, a, c] = lp[2]
  # l1 is read from the last row only: the first step cannot depend on later tokens.
  return l1, l2, l3


def _logp(brute, b, seq):
  l1, l2, l3 = brute
  terms = [l1[b, seq[0]]]
  if len(seq) > 1:
    terms.append(l2[b, seq[0], seq[1]])
  if len(seq) > 2:
    terms.append(l3[b, seq[0], seq[1], seq[2]])
  return float(sum(terms))


def _brute_hypotheses(brute, b, alpha):
  """All hypotheses (ending at EOS, or at MAX_LEN) with penalised scores, best first."""
  hyps = []
  for length in range(1, MAX_LEN + 1):
    for seq in itertools.product(EMIT, repeat=length):
      if EOS in seq[:-1] or (length < MAX_LEN and seq[-1] != EOS):
        continue
      hyps.append((_logp(brute, b, seq) / decoding.length_penalty(length, alpha), seq))
  return sorted(hyps, key=lambda h: -h[0])


def test_exhaustive_beam_search_equals_brute_force(small, brute):
  model, params, images, prompts = small
  alpha, beams = 0.6, 36  # ≥ every live set: the search is then exact.
  fn = jax.jit(functools.partial(decoding.beam_search, model, num_beams=beams,
                                 max_len=MAX_LEN, alpha=alpha, bos_id=BOS, eos_id=EOS))
  out = fn(params, images, prompts)
  for b in range(2):
    ref = _brute_hypotheses(brute, b, alpha)[:beams]
    np.testing.assert_allclose(np.asarray(out.scores[b]), [s for s, _ in ref], atol=1e-4)
    for k in range(5):
      seq = [int(t) for t in out.sequences[b, k] if t != PAD]
      assert tuple(seq) == ref[k][1]


def test_greedy_and_batches_with_different_prompt_lengths(small, brute):
  model, params, images, prompts = small
  greedy = jax.jit(functools.partial(decoding.greedy_decode, model, max_len=MAX_LEN,
                                     bos_id=BOS, eos_id=EOS))
  seqs, scores = greedy(params, images, prompts)
  for b in range(2):  # Greedy follows the argmax of the brute-force log-probs.
    prefix = []
    for _ in range(MAX_LEN):
      lp = np.array([_logp(brute, b, prefix + [x]) if x not in (PAD, BOS) else -np.inf
                     for x in range(VOCAB)])
      prefix.append(int(np.argmax(lp)))
      if prefix[-1] == EOS:
        break
    assert [int(x) for x in seqs[b] if x != PAD] == prefix
    np.testing.assert_allclose(scores[b], _logp(brute, b, prefix), atol=1e-4)
  # Example 1 alone, with its prompt unpadded, decodes the same.
  alone, alone_scores = greedy(params, images[1:], prompts[1:, :1])
  np.testing.assert_array_equal(alone[0], seqs[1])
  np.testing.assert_allclose(alone_scores[0], scores[1], atol=1e-5)


NAMES = [[3, 4], [3, 5, 6], [7], [5, 5], [6, 3, 4]]


def test_constrained_beam_search_only_emits_names(small, brute):
  model, params, images, prompts = small
  trie = trie_lib.build_trie(NAMES, EOS)
  fn = jax.jit(functools.partial(decoding.constrained_beam_search, model, num_beams=6,
                                 max_len=4, alpha=0.6, bos_id=BOS, eos_id=EOS))
  out = fn(params, images, prompts, trie)
  for b in range(2):
    got = []
    for k in range(6):
      seq = [int(t) for t in out.sequences[b, k] if t != PAD]
      if out.scores[b, k] > decoding.NEG / 2:
        assert seq[-1] == EOS and seq[:-1] in NAMES
        assert int(out.rows[b, k]) == NAMES.index(seq[:-1])
        got.append((float(out.scores[b, k]), tuple(seq[:-1])))
      else:
        assert int(out.rows[b, k]) == -1
    # With beams ≥ names, every name is found, ranked as brute force ranks them.
    ref = sorted(((_logp(brute, b, n + [EOS]) / decoding.length_penalty(len(n) + 1, 0.6),
                   tuple(n)) for n in NAMES if len(n) + 1 <= MAX_LEN), key=lambda h: -h[0])
    short = [g for g in got if len(g[1]) + 1 <= MAX_LEN]
    assert [g[1] for g in short] == [r[1] for r in ref]
    np.testing.assert_allclose([g[0] for g in short], [r[0] for r in ref], atol=1e-4)
    assert len(got) == len(NAMES)


def test_ald_code_lookup_and_decoding(small):
  model, params, images, prompts = small
  codes = [[3, 4, 5], [6, 7, 3], [4, 4, 4]]
  code_trie = trie_lib.build_trie(codes, EOS)
  seqs = jnp.array([[3, 4, 5, 2], [3, 4, 2, 0], [6, 7, 3, 2], [4, 4, 4, 4], [7, 2, 0, 0]])
  np.testing.assert_array_equal(decoding.lookup_rows(code_trie, seqs, EOS), [0, -1, 1, -1, -1])
  fn = jax.jit(functools.partial(decoding.ald_decode, model, code_len=3, num_beams=4,
                                 bos_id=BOS, eos_id=EOS))
  out = fn(params, images, prompts, code_trie)
  rows = np.asarray(out.beams.rows)
  np.testing.assert_array_equal(rows, decoding.lookup_rows(code_trie, out.beams.sequences, EOS))
  np.testing.assert_array_equal(out.rows, rows[:, 0])
  # The "cheaply constrained" choice: the best beam whose code exists.
  beam_rows = jnp.array([[-1, 2, 0, -1], [1, -1, -1, -1], [-1, -1, -1, -1]])
  np.testing.assert_array_equal(decoding.select_entity(beam_rows, first_valid=True), [2, 1, -1])
  np.testing.assert_array_equal(decoding.select_entity(beam_rows, first_valid=False),
                                [-1, 1, -1])


def test_top_k_blocked_equals_top_k():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 2, 5000)).astype(np.float32)
  x[0, 0, 4999] = 50.0  # In the last, padded block.
  x[1, 1, :] = -1e9     # A row of masked values (ties everywhere): still k picks.
  for k in (1, 8):
    values, idx = decoding.top_k_blocked(jnp.asarray(x), k, block=64)
    ref_values, ref_idx = jax.lax.top_k(jnp.asarray(x), k)
    np.testing.assert_array_equal(values, ref_values)
    np.testing.assert_array_equal(idx[:, 0], ref_idx[:, 0])
    np.testing.assert_array_equal(idx[0], ref_idx[0])
    assert idx[0, 0, 0] == 4999
  short = jnp.asarray(x[..., :100])  # Short rows: top_k itself.
  np.testing.assert_array_equal(decoding.top_k_blocked(short, 8)[1], jax.lax.top_k(short, 8)[1])
