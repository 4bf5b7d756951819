"""GER-ALD codes: scenic's construction, uniqueness at scale and on the world's KB, the file
that training and evaluation share, and the encode → decode round trip."""

import numpy as np
import pytest

from rew_jax.data import code_table
from rew_jax.data import synthetic
from rew_jax.data import tasks
from rew_jax.data.tokenizers import load_tokenizer
from rew_jax.evaluators import mapping as mapping_lib
from rew_jax.kb import codes as codes_lib
from rew_jax.models import decoding
from rew_jax.models import trie as trie_lib
from rew_jax.records import RewRecord

EOS = codes_lib.SEP_ID


def test_rarest_first_ties_by_position_repeats_kept():
  # Token counts over all names: 5 ×6, 7 ×4, 1 ×2, 8 ×2, 2, 3, 9 once each.
  names = [[5, 7, 1], [5, 7, 2], [5, 3], [8, 8, 5], [5, 7, 1, 9], [5], [7]]
  codes = codes_lib.ald_codes(names, length=3, vocab_size=2000, seed=0)
  assert codes.shape == (7, 5)
  assert codes[0].tolist() == [1, 7, 5, EOS, 0]      # Rarest first.
  assert codes[1].tolist() == [2, 7, 5, EOS, 0]
  assert codes[2].tolist() == [3, 5, EOS, 0, 0]      # A 2-token name: a 2-token code.
  assert codes[3].tolist() == [8, 8, 5, EOS, 0]      # A repeated token fills two slots.
  assert codes[5].tolist() == [5, EOS, 0, 0, 0]
  # [5, 7, 1, 9] ranks 9, 1, 7, 5: its code [9, 1, 7] is free.
  assert codes[4].tolist() == [9, 1, 7, EOS, 0]


def test_ties_keep_name_order():
  codes = codes_lib.ald_codes([[11, 12, 13, 14]], length=3, vocab_size=100)
  assert codes[0].tolist() == [11, 12, 13, EOS, 0]


def test_collision_fill_order_name_tokens_then_random():
  # Three identical-prefix names: counts make 1, 2, 3 the rarest of each, so all three want
  # [1, 2, 3]; the visit order decides who keeps it.
  names = [[1, 2, 3, 50, 50, 50, 50], [1, 2, 3, 60, 60, 60, 60], [1, 2, 3]]
  stats = {}
  codes = codes_lib.ald_codes(names, length=3, vocab_size=2000, seed=5, stats=stats)
  order = np.random.default_rng(5).permutation(3).tolist()
  plain = [1, 2, 3, EOS, 0]
  assert codes[order[0]].tolist() == plain
  for row in order[1:]:
    if row == 0:
      assert codes[0].tolist() == [1, 2, 3, 50, EOS]   # Its next name token, in the end slot.
    elif row == 1:
      assert codes[1].tolist() == [1, 2, 3, 60, EOS]
    else:  # No spare token: a random word piece in the end slot.
      assert codes[2, :3].tolist() == [1, 2, 3] and codes[2, 3] >= codes_lib.FIRST_WORD_ID
      assert codes[2, 4] == EOS
  assert stats["by_name_token"] + stats["by_random_token"] == 2
  assert stats["by_random_token"] == int(order[0] != 2)


def _unique(codes):
  return len({tuple(c) for c in codes.tolist()}) == len(codes)


def test_unique_over_100k_synthetic_names():
  # Zipf-distributed word pieces, 1–6 per name: many names share their rarest tokens.
  rng = np.random.default_rng(0)
  vocab = np.arange(1000, 30522)
  p = 1.0 / np.arange(1, len(vocab) + 1) ** 1.1
  p /= p.sum()
  lengths = rng.integers(1, 7, size=100_000)
  flat = rng.choice(vocab, size=int(lengths.sum()), p=p).tolist()
  ends = np.cumsum(lengths).tolist()
  names = [flat[e - n:e] for e, n in zip(ends, lengths.tolist())]
  names += names[:500]  # Exact duplicates too: they need random tokens.
  stats = {}
  codes = codes_lib.ald_codes(names, length=3, vocab_size=30522, seed=0, stats=stats)
  assert _unique(codes)
  assert stats["by_name_token"] > 100 and stats["by_random_token"] >= 500
  n_tokens = (codes != 0).sum(1) - 1
  grown = n_tokens > np.minimum([len(n) for n in names], 3)  # One slot more: the collisions.
  assert grown.sum() == sum(stats.values()) and n_tokens.max() == 4
  assert (codes[np.arange(len(codes)), n_tokens] == EOS).all()  # Every code ends in EOS.


def test_unique_on_the_worlds_kb():
  # Every entity the world generator can make (all looks plus the concepts).
  cfg = synthetic.default_config()
  cfg.num_entities = 700
  entities = synthetic.make_entities(cfg)
  tok = load_tokenizer("bert")
  names = [tok.encode(e.title) for e in entities]
  stats = {}
  codes = codes_lib.ald_codes(names, length=3, stats=stats)
  assert _unique(codes) and len(codes) == len(entities) > 700
  assert stats["by_name_token"] > 0  # The world's names collide: the rule is exercised.


def test_file_round_trip_entity_to_code_to_entity(tmp_path):
  """entity id → training target (tasks) → generated tokens → entity id (mapping and the
  in-graph trie lookup), through the one file the KB build writes."""
  tok = load_tokenizer("bert")
  cfg = synthetic.default_config()
  cfg.num_entities = 120
  entities = synthetic.make_entities(cfg)
  ids = [e.entity_id for e in entities]
  codes = codes_lib.ald_codes([tok.encode(e.title) for e in entities], length=3)
  path = str(tmp_path / "ald_codes.npz")
  codes_lib.save_codes(path, ids, codes, length=3, seed=0)
  table = code_table.load_codes(path)
  assert table.max_tokens <= 4 and (table.rows_of(ids[::-1]) == np.arange(len(ids))[::-1]).all()
  assert table.rows_of(["Q0", ids[3] + "0"]).tolist() == [-1, -1]

  mix = tasks.TaskMixture({"entity": {"target": "ald", "codes_path": path}})
  rng = np.random.default_rng(0)
  generated = []
  for e in entities:
    rec = RewRecord(image_id="x", image=b"\xff", caption="", entity_id=e.entity_id,
                    entity_name=e.title, curation_status="kept")
    target = mix(rec, rng)["target_ids"] + [EOS]   # What `tokenize(eos=True)` makes of it.
    generated.append(target + [0] * (6 - len(target)))
  generated = np.array(generated, np.int32)
  mapper = mapping_lib.CodeMapper(table, ids)
  assert [m.entity_id for m in mapper({"tokens": generated})] == ids
  trie = trie_lib.build_trie(codes_lib.code_tokens(table.codes), EOS)
  rows = np.asarray(decoding.lookup_rows(trie, generated))
  assert rows.tolist() == list(range(len(ids)))
  # A sequence that is not a code maps to no entity; one without EOS is not a code either.
  bad = np.array([[999, 999, 999, EOS, 0, 0], generated[0, :1].tolist() + [1500] * 5])
  assert [m.entity_id for m in mapper({"tokens": bad})] == [None, None]
  assert np.asarray(decoding.lookup_rows(trie, bad)).tolist() == [-1, -1]


def test_codes_file_errors(tmp_path):
  with pytest.raises(code_table.CodesError, match="does not exist: the KB build writes it"):
    code_table.load_codes(str(tmp_path / "none.npz"))
  old = tmp_path / "old.npz"
  np.savez(old, codes=np.zeros((2, 4), np.int32))  # The earlier row-only file.
  with pytest.raises(code_table.CodesError, match="has format \\(none\\)"):
    code_table.load_codes(str(old))
