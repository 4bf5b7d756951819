"""The Flax BERT sentence encoder against transformers' BertModel on the shipped MiniLM."""

import os
import shutil

import jax
import numpy as np
import pytest

from rew_jax.kb import text_encoder as te

SENTENCES = [
    "Crimson Striped Kestrel",
    "a blurry photo of my dog on the beach, taken near Café Müller!!",
    "",
    "Negative equity",
    "Dassault Falcon 900 flying over the Alps at sunset with some clouds " * 4,
    "東京タワー",
    "DSC_0042.JPG",
]


@pytest.fixture(scope="module")
def encoder():
  return te.TextEncoder(te.default_model_dir(), max_length=128, batch_size=4)


def _reference(model_dir, tokenizer, texts):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  model = transformers.BertModel.from_pretrained(model_dir, local_files_only=True).eval()
  out = []
  for text in texts:
    ids = torch.tensor([tokenizer.encode(text).ids])
    with torch.no_grad():
      hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
    pooled = hidden.mean(0)
    out.append((pooled / pooled.norm()).numpy())
  return np.stack(out)


def test_parity_with_transformers_on_shipped_weights(encoder):
  ours = encoder.encode(SENTENCES)
  ref = _reference(encoder.model_dir, encoder.tokenizer, SENTENCES)
  cosine = (ours * ref).sum(1)
  assert cosine.min() >= 0.9999, cosine
  assert np.abs(ours - ref).max() <= 1e-4
  np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_padding_is_off_and_batches_do_not_change_results(encoder):
  ids = encoder.tokenize(["Negative equity"])[0]
  assert ids[0] == te.CLS_ID and ids[-1] == te.SEP_ID and te.PAD_ID not in ids
  one_by_one = np.concatenate([encoder.encode([s]) for s in SENTENCES[:5]])
  np.testing.assert_allclose(encoder.encode(SENTENCES[:5]), one_by_one, atol=2e-6)
  assert encoder.encode([]).shape == (0, 384)


def test_meaning_orders_similarity(encoder):
  e = encoder.encode(["a kestrel perched on a branch", "Crimson Striped Kestrel",
                      "Negative equity"])
  assert e[0] @ e[1] > e[0] @ e[2] + 0.1


def test_batch_sharded_over_mesh_matches(encoder):
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
  sharded = te.TextEncoder(encoder.model_dir, max_length=128, batch_size=8, mesh=mesh)
  np.testing.assert_allclose(sharded.encode(SENTENCES), encoder.encode(SENTENCES), atol=2e-6)


def test_missing_weight_file_is_named(tmp_path):
  src = te.default_model_dir()
  for name in ("config.json", "tokenizer.json"):
    shutil.copy(os.path.join(src, name), tmp_path / name)
  with pytest.raises(te.WeightsError, match="missing model.safetensors"):
    te.TextEncoder(str(tmp_path))


def test_wrong_tensor_shape_is_named():
  cfg = te.BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=16, vocab_size=10, max_position_embeddings=4)
  with pytest.raises(te.WeightsError, match="no tensor 'embeddings.word_embeddings.weight'"):
    te.convert_hf_state({}, cfg)
  state = {"bert.embeddings.word_embeddings.weight": np.zeros((11, 8), np.float32)}
  with pytest.raises(te.WeightsError, match=r"shape \(11, 8\), expected \(10, 8\)"):
    te.convert_hf_state(state, cfg)
