"""Parameter counts and FLOPs per example of a GiT config (for docs and MFU).

Dimensions:
  N  image tokens (G² + 1)   P  prompt length   T  target length   S  N + P + T
  Dv ViT width   Fv ViT MLP width   D decoder width   F decoder MLP width   V vocabulary

FLOPs count matrix multiplies only (2 per multiply-add), the convention of MFU reports;
layer norms, softmax and activations add a few percent. Attention over a masked dense
sequence is counted in full, as the kernels compute it. Training = 3 × forward (the
backward pass costs two forwards); remat adds one more forward of the rematerialised
blocks, which MFU conventionally does not count.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import numpy as np

from rew_jax.models import git as git_lib
from rew_jax.models import git_config


def param_count(config) -> dict[str, int]:
  """Exact parameter counts by top-level module, and the total (no allocation)."""
  spec = git_config.parse_config(config)
  model = git_lib.GiT(spec)
  abstract = nn.unbox(jax.eval_shape(model.init, jax.random.key(0),
                                     *git_lib.dummy_inputs(spec)))["params"]
  counts = {k: int(sum(np.prod(x.shape) for x in jax.tree.leaves(v)))
            for k, v in abstract.items()}
  counts["total"] = sum(counts.values())
  return counts


@dataclasses.dataclass(frozen=True)
class Flops:
  vit: float
  decoder: float
  head: float

  @property
  def total(self) -> float:
    return self.vit + self.decoder + self.head


def _vit_flops(v, image_size=None) -> float:
  grid = (image_size or v.image_size) // v.patch_size
  n = grid * grid + 1
  patch = 2 * (n - 1) * v.patch_size**2 * 3 * v.width
  per_block = (2 * n * 4 * v.width**2 +  # q, k, v, out projections
               2 * 2 * n * n * v.width +  # scores and weighted sum
               2 * 2 * n * v.width * v.mlp_dim)
  return patch + v.depth * per_block


def _layer_flops(d, f, queries, keys) -> float:
  return 2 * queries * 4 * d * d + 2 * 2 * queries * keys * d + 2 * 2 * queries * d * f


def forward_flops(config, prompt_len: int | None = None, target_len: int | None = None) -> Flops:
  """FLOPs of one training forward pass for one example."""
  spec = git_config.parse_config(config)
  v, dec = spec.vit, spec.decoder
  p = spec.max_prompt_len if prompt_len is None else prompt_len
  t = spec.max_target_len if target_len is None else target_len
  n = v.num_tokens
  s = n + p + t
  vit = _vit_flops(v) + 2 * n * v.width * dec.hidden_size  # + visual projection
  decoder = dec.num_layers * _layer_flops(dec.hidden_size, dec.mlp_dim, s, s)
  head = 2 * t * dec.hidden_size * dec.vocab_size  # targets only
  return Flops(float(vit), float(decoder), float(head))


def train_flops_per_example(config, prompt_len=None, target_len=None) -> float:
  """Forward + backward (3 × forward) FLOPs of one example: the MFU numerator."""
  return 3.0 * forward_flops(config, prompt_len, target_len).total


def decode_flops_per_example(config, *, max_len: int, num_beams: int = 1,
                             prompt_len: int | None = None) -> float:
  """FLOPs to decode one example with the KV cache: image + prompt encoded once, then
  max_len steps for each of num_beams beams (every step runs; early stops do less)."""
  spec = git_config.parse_config(config)
  v, dec = spec.vit, spec.decoder
  p = spec.max_prompt_len if prompt_len is None else prompt_len
  prefix = v.num_tokens + p
  flops = _vit_flops(v) + 2 * v.num_tokens * v.width * dec.hidden_size
  flops += dec.num_layers * _layer_flops(dec.hidden_size, dec.mlp_dim, prefix, prefix)
  for step in range(max_len):
    per_beam = dec.num_layers * _layer_flops(dec.hidden_size, dec.mlp_dim, 1, prefix + step + 1)
    per_beam += 2 * dec.hidden_size * dec.vocab_size
    flops += num_beams * per_beam
  return float(flops)
