"""The GIT text decoder: post-LN BERT layers over [image tokens, prompt, target].

Dimensions:
  B  batch          N  image tokens     P  prompt length     T  target length
  S  N + P + T      L  N + P (prefix)   D  width             H  heads   K  head width
  R  beams          V  vocabulary       NL decoder layers

The GIT attention mask: image and prompt tokens attend to each other bidirectionally;
target tokens attend to the whole prefix and causally to earlier targets; padding (token 0)
is never attended to. Text positions count only real tokens, so a right-padded prompt
gives its targets the same positions as the unpadded prompt would.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from rew_jax.data.tokenizers import BERT_PAD_ID
from rew_jax.models import layers


@dataclasses.dataclass(frozen=True)
class DecoderSpec:
  num_layers: int = 6
  hidden_size: int = 768
  num_heads: int = 12
  mlp_dim: int = 3072
  dropout: float = 0.1
  attention_dropout: float = 0.0
  activation: str = "gelu"
  ln_eps: float = 1e-12
  vocab_size: int = 30522
  max_positions: int = 64


def git_mask(num_image: int, prompt: jax.Array, target: jax.Array) -> jax.Array:
  """bool [B,1,S,S]: may query q attend to key k? (see the module docstring)."""
  batch = prompt.shape[0]
  valid = jnp.concatenate([jnp.ones((batch, num_image), bool), prompt != BERT_PAD_ID,
                           target != BERT_PAD_ID], axis=1)
  seq = valid.shape[1]
  is_target = jnp.arange(seq) >= num_image + prompt.shape[1]
  idx = jnp.arange(seq)
  causal = idx[None, :] <= idx[:, None]  # [q, k]
  allowed = ~is_target[None, :] | (is_target[:, None] & causal)
  return (allowed[None] & valid[:, None, :])[:, None]


def text_positions(prompt: jax.Array, target: jax.Array) -> jax.Array:
  """int32 [B,P+T]: index of each token among the real (non-pad) text tokens."""
  valid = jnp.concatenate([prompt, target], axis=1) != BERT_PAD_ID
  return jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32)


class TextEmbed(nn.Module):
  """Word + position embeddings, LayerNorm, dropout (BERT embeddings without types)."""
  spec: DecoderSpec
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, positions, deterministic: bool = True):
    spec = self.spec
    words = nn.Embed(spec.vocab_size, spec.hidden_size, dtype=self.dtype,
                     param_dtype=jnp.float32, name="word_embeddings",
                     embedding_init=layers.partitioned(layers.default_kernel_init,
                                                       ("vocab", "embed")))
    pos = nn.Embed(spec.max_positions, spec.hidden_size, dtype=self.dtype,
                   param_dtype=jnp.float32, name="position_embeddings",
                   embedding_init=layers.partitioned(layers.default_kernel_init,
                                                     ("pos", "embed")))
    x = words(tokens) + pos(positions)
    x = layers.layer_norm(spec.ln_eps, self.dtype, name="ln")(x)
    return nn.Dropout(spec.dropout)(x, deterministic=deterministic)


class DecoderLayer(nn.Module):
  """Post-LN BERT layer: ln(x + drop(attn(x))); ln(x + drop(mlp(x)))."""
  spec: DecoderSpec
  dtype: layers.Dtype = jnp.float32
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, cache, mask, decode_index):
    spec = self.spec
    h, new_cache = layers.MultiHeadAttention(
        spec.num_heads, dtype=self.dtype, attention_dropout=spec.attention_dropout,
        deterministic=self.deterministic, name="attn")(x, mask, cache, decode_index)
    h = nn.Dropout(spec.dropout)(h, deterministic=self.deterministic)
    x = layers.layer_norm(spec.ln_eps, self.dtype, name="ln_1")(x + h)
    h = layers.Mlp(spec.mlp_dim, spec.activation, dtype=self.dtype, name="mlp")(x)
    h = nn.Dropout(spec.dropout)(h, deterministic=self.deterministic)
    x = layers.layer_norm(spec.ln_eps, self.dtype, name="ln_2")(x + h)
    x = layers.constrain(x, ("batch", "length", "act_embed"))
    return x, new_cache


class DecoderStack(nn.Module):
  """NL decoder layers, unrolled or under nn.scan (identical outputs).

  full:   x [B,S,D], mask [B,1,S,S], cache None → (x, {k, v: [NL,B,S,H,K]})
  decode: x [B,R,D], mask = prefix validity [B,L], cache {prefix_k, prefix_v:
          [NL,B,L,H,K], k, v: [NL,B,R,T,H,K]}, decode_index int → (x, {k, v} updated)
  """
  spec: DecoderSpec
  dtype: layers.Dtype = jnp.float32
  remat: bool = False
  scan_layers: bool = False

  @nn.compact
  def __call__(self, x, mask, cache=None, decode_index=None, train: bool = False):
    layer = DecoderLayer
    if self.remat:
      layer = nn.remat(layer, prevent_cse=not self.scan_layers)
    if self.scan_layers:
      stack = nn.scan(layer, variable_axes={"params": 0},
                      split_rngs={"params": True, "dropout": True},
                      in_axes=(0, nn.broadcast, nn.broadcast),
                      length=self.spec.num_layers,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      return stack(self.spec, self.dtype, not train, name="layers")(
          x, cache, mask, decode_index)
    outs = []
    for i in range(self.spec.num_layers):
      layer_cache = None if cache is None else jax.tree.map(lambda c: c[i], cache)
      x, out = layer(self.spec, self.dtype, not train, name=f"layers_{i}")(
          x, layer_cache, mask, decode_index)
      outs.append(out)
    return x, jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
