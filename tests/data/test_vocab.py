"""The trimmed vocabulary: which ids a corpus keeps, its file checks, the id → row table."""

import numpy as np
import pytest

from rew_jax.data import tokenizers, vocab
from rew_jax.errors import ConfigError


def test_build_keeps_the_texts_ids_and_the_special_ones():
  tok = tokenizers.load_tokenizer("bert")
  texts = ["Crimson Banded Kestrel", "what is this bird?", "", "crimson"]
  ids = vocab.build_ids(texts, tok, batch=2)  # Several encode batches.
  expected = set(vocab.special_ids(tok))
  for t in texts:
    expected.update(tok.encode(t))
  assert ids.dtype == np.int32 and list(ids) == sorted(expected)
  assert {0, 100, 101, 102} <= set(ids.tolist())


def test_save_load_round_trip_and_bad_files(tmp_path):
  ids = np.array([0, 100, 101, 102, 2000], np.int32)
  path = vocab.save_ids(ids, str(tmp_path / "v" / vocab.FILE_NAME))
  assert vocab.load_ids(path, 30522) == (0, 100, 101, 102, 2000)
  with pytest.raises(ConfigError, match="does not exist"):
    vocab.load_ids(str(tmp_path / "missing.npy"), 30522)
  with pytest.raises(ConfigError, match=r"in \[0, 1000\)"):
    vocab.load_ids(path, 1000)  # 2000 is beyond the tokenizer.
  unsorted = vocab.save_ids(np.array([0, 102, 101]), str(tmp_path / "unsorted.npy"))
  with pytest.raises(ConfigError, match="sorted, unique"):
    vocab.load_ids(unsorted, 30522)
  np.save(tmp_path / "floats.npy", np.array([0.5, 1.5]))
  with pytest.raises(ConfigError, match="1-D integer array"):
    vocab.load_ids(str(tmp_path / "floats.npy"), 30522)
  (tmp_path / "text.npy").write_text("not numpy")
  with pytest.raises(ConfigError, match="not a numpy id array"):
    vocab.load_ids(str(tmp_path / "text.npy"), 30522)


def test_compact_table_sends_dropped_ids_to_unk():
  table = vocab.compact_table((0, 5, 100, 101, 102), 128)
  assert table.shape == (128,)
  assert [table[i] for i in (0, 5, 100, 101, 102)] == [0, 1, 2, 3, 4]
  assert table[6] == table[127] == 2  # [UNK]'s row.
  with pytest.raises(ConfigError, match=r"lacks the \[UNK\] id"):
    vocab.compact_table((0, 101, 102), 128)
