"""Building blocks shared by the image encoder and the text decoder.

Dimensions:
  B  batch                 S  query length          L  key/value length
  D  model width           H  attention heads       K  head width (D = H·K)
  F  MLP width             R  beams (decoding)      T  cached target length

Parameters carry logical axis names only; `rew_jax.sharding` maps them to mesh axes:
  embed  model width       heads  attention heads   kv   head width
  mlp    MLP width         vocab  vocabulary        pos  positions
  layers scanned layer axis (added by nn.scan)      norm layer-norm vectors
Activations are constrained with: batch, length, act_embed, act_heads, act_mlp, act_vocab.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

default_kernel_init = nn.initializers.normal(stddev=0.02)


def partitioned(init: Callable, names: tuple[str | None, ...]) -> Callable:
  return nn.with_logical_partitioning(init, names)


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
  """A logical sharding constraint; a no-op outside a mesh and rules context."""
  return nn.with_logical_constraint(x, names)


ACTIVATIONS = {
    "gelu": lambda x: nn.gelu(x, approximate=False),  # Exact erf GELU (BERT, GIT decoder).
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # CLIP.
    "relu": jax.nn.relu,  # Some BERT checkpoints.
}


def layer_norm(eps: float, dtype: Dtype, name: str | None = None) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=eps, dtype=dtype, param_dtype=jnp.float32, name=name,
      scale_init=partitioned(nn.initializers.ones, ("norm",)),
      bias_init=partitioned(nn.initializers.zeros, ("norm",)))


def padding_mask(valid: jax.Array) -> jax.Array:
  """Bidirectional attention over real tokens: valid [B,L] → bool [B,1,1,L] (as in BERT).

  Broadcasts against [B,H,S,L]; padded queries still attend to the real keys, so their
  outputs stay finite (callers pool them away).
  """
  return (valid > 0)[:, None, None, :]


def softmax_attention(q, k, v, mask, *, dropout_rate=0.0, deterministic=True,
                      dropout_rng=None):
  """The plain formula: softmax(q·kᵀ/√K + mask)·v in float32. q [B,S,H,K], k/v [B,L,H,K].

  The reference the fused path is tested against, and the path taken when attention
  probabilities need dropout (the fused kernels have none).
  """
  scale = q.shape[-1]**-0.5
  logits = jnp.einsum("bshk,blhk->bhsl", q, k, preferred_element_type=jnp.float32) * scale
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1)
  if dropout_rate > 0.0 and not deterministic:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
    probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
  return jnp.einsum("bhsl,blhk->bshk", probs.astype(v.dtype), v)


ATTENTION_ENV = "REW_JAX_ATTENTION"  # auto (default), xla or cudnn.
_logged_attention: set = set()


def attention_implementation(platform: str, dtype, head_dim: int,
                             requested: str = "auto") -> str:
  """The `implementation=` of jax.nn.dot_product_attention for these shapes.

  "cudnn" (flash attention) on GPUs for half-precision inputs with a head size cuDNN's
  kernels take (a multiple of 8, at most 128); "xla" everywhere else: on TPU and CPU, and
  for float32 GPU runs, which cuDNN's fused kernel refuses. `requested` (or the
  REW_JAX_ATTENTION variable) forces one.
  """
  if requested not in ("auto", "xla", "cudnn"):
    raise ValueError(f"attention implementation {requested!r} is not auto, xla or cudnn")
  if requested != "auto":
    return requested
  half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  if platform == "gpu" and half and head_dim % 8 == 0 and head_dim <= 128:
    return "cudnn"
  return "xla"


def fused_attention(q, k, v, mask):
  """jax.nn.dot_product_attention with its implementation chosen explicitly (and logged
  once per choice): `attention_implementation`. mask: bool broadcastable to [B,H,S,L]."""
  requested = os.environ.get(ATTENTION_ENV, "auto")
  impl = attention_implementation(jax.default_backend(), q.dtype, q.shape[-1], requested)
  why = ""
  try:
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)
  except (ValueError, NotImplementedError) as e:  # cuDNN's checks run while tracing.
    if requested != "auto" or impl == "xla":
      raise
    impl, why = "xla", f"; cudnn refused these shapes: {e}"
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)
  key = (impl, str(q.dtype), q.shape[-1])
  if key not in _logged_attention:
    _logged_attention.add(key)
    logging.getLogger(__name__).info("attention: %s (%s, head size %d, %s)%s", impl,
                                     jax.default_backend(), q.shape[-1], q.dtype, why)
  return out


class HeadsDense(nn.Module):
  """x [..., D] → [..., H, K] (`to_heads`) or x [..., H, K] → [..., D].

  Written out rather than nn.DenseGeneral, whose initialisers see a flattened 2-D kernel
  and so cannot carry 3-D logical axis names.
  """
  heads: int
  head_dim: int
  width: int
  to_heads: bool
  dtype: Dtype = jnp.float32
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    if self.to_heads:
      shape, names = (self.width, self.heads, self.head_dim), ("embed", "heads", "kv")
      bias_shape, bias_names, eq = (self.heads, self.head_dim), ("heads", "kv"), "...d,dhk->...hk"
    else:
      shape, names = (self.heads, self.head_dim, self.width), ("heads", "kv", "embed")
      bias_shape, bias_names, eq = (self.width,), ("embed",), "...hk,hkd->...d"
    kernel = self.param("kernel", partitioned(default_kernel_init, names), shape, jnp.float32)
    y = jnp.einsum(eq, x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias = self.param("bias", partitioned(nn.initializers.zeros, bias_names), bias_shape,
                        jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


class MultiHeadAttention(nn.Module):
  """Self-attention with separate q/k/v projections to [H,K] (so heads can be sharded).

  Two modes:
    full    x [B,S,D], mask bool [B,1,S,S]; returns (y [B,S,D], (k, v) each [B,S,H,K]).
    decode  x [B,R,D]: one new token for each of R beams, `cache` holds the keys/values of
            the shared prefix {prefix_k, prefix_v: [B,L,H,K]} and of earlier targets
            {k, v: [B,R,T,H,K]}; mask is the prefix validity [B,L]; the new key/value is
            written at target slot `decode_index`. Returns (y [B,R,D], updated cache).
  Sharing the prefix across beams is what keeps beam search from re-encoding the image.
  """
  num_heads: int
  dtype: Dtype = jnp.float32
  attention_dropout: float = 0.0
  deterministic: bool = True
  use_bias: bool = True

  @nn.compact
  def __call__(self, x, mask, cache=None, decode_index=None):
    width = x.shape[-1]
    head_dim = width // self.num_heads
    dense = lambda name: HeadsDense(self.num_heads, head_dim, width, True, self.dtype,
                                    self.use_bias, name=name)
    q, k, v = dense("query")(x), dense("key")(x), dense("value")(x)
    if cache is None:
      q = constrain(q, ("batch", "length", "act_heads", None))
      use_dropout = self.attention_dropout > 0.0 and not self.deterministic
      if use_dropout:
        y = softmax_attention(q, k, v, mask, dropout_rate=self.attention_dropout,
                              deterministic=False, dropout_rng=self.make_rng("dropout"))
      else:
        y = fused_attention(q, k, v, mask)
      new_cache = (k, v)
    else:
      y, new_cache = self._decode(q, k, v, mask, cache, decode_index)
    y = constrain(y, ("batch", "length", "act_heads", None))
    out = HeadsDense(self.num_heads, head_dim, width, False, self.dtype, self.use_bias,
                     name="out")
    return out(y), new_cache

  def _decode(self, q, k, v, prefix_mask, cache, decode_index):
    # q, k, v: [B,R,H,K] — one token per beam.
    cache_k = cache["k"].at[:, :, decode_index].set(k.astype(cache["k"].dtype))
    cache_v = cache["v"].at[:, :, decode_index].set(v.astype(cache["v"].dtype))
    scale = q.shape[-1]**-0.5
    f32 = jnp.float32
    logits_p = jnp.einsum("brhk,blhk->brhl", q, cache["prefix_k"], preferred_element_type=f32)
    logits_t = jnp.einsum("brhk,brthk->brht", q, cache_k, preferred_element_type=f32)
    neg = jnp.finfo(f32).min
    logits_p = jnp.where(prefix_mask[:, None, None, :], logits_p * scale, neg)
    seen = jnp.arange(cache_k.shape[2]) <= decode_index
    logits_t = jnp.where(seen, logits_t * scale, neg)
    probs = jax.nn.softmax(jnp.concatenate([logits_p, logits_t], axis=-1), axis=-1)
    probs_p, probs_t = jnp.split(probs, [logits_p.shape[-1]], axis=-1)
    y = (jnp.einsum("brhl,blhk->brhk", probs_p.astype(v.dtype), cache["prefix_v"]) +
         jnp.einsum("brht,brthk->brhk", probs_t.astype(v.dtype), cache_v))
    return y, dict(k=cache_k, v=cache_v)  # The prefix is read-only: not returned.


class Mlp(nn.Module):
  """Dense → activation → Dense."""
  mlp_dim: int
  activation: str = "gelu"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    h = nn.Dense(self.mlp_dim, dtype=self.dtype, param_dtype=jnp.float32, name="fc1",
                 kernel_init=partitioned(default_kernel_init, ("embed", "mlp")),
                 bias_init=partitioned(nn.initializers.zeros, ("mlp",)))(x)
    h = ACTIVATIONS[self.activation](h)
    h = constrain(h, ("batch", "length", "act_mlp"))
    return nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32, name="fc2",
                    kernel_init=partitioned(default_kernel_init, ("mlp", "embed")),
                    bias_init=partitioned(nn.initializers.zeros, ("embed",)))(h)


def drop_path(x, rate: float, deterministic: bool, rng_fn: Callable[[], jax.Array]):
  """Stochastic depth: drops the whole residual branch of some examples."""
  if rate <= 0.0 or deterministic:
    return x
  keep = jax.random.bernoulli(rng_fn(), 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x / (1.0 - rate), 0.0)
