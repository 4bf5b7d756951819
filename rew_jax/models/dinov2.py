"""DINOv2 (Oquab et al. 2023) as a frozen image-feature model: the registered "dinov2".

Dimensions:
  B  batch            I  image side (pixels)     P  patch side
  G  grid side (I/P)  N  tokens = G² + 1 (class token first)
  D  width            F  MLP width (4·D)

Architecture (as HF `Dinov2Model`, without register tokens or SwiGLU): patch embedding
with bias, class token, learned position embeddings (resized bicubically to the input's
grid), pre-LN blocks whose two residual branches are scaled per channel (LayerScale),
exact-GELU MLPs, a final LayerNorm. The image feature is the class token after that
LayerNorm (HF's `pooler_output`). Weights come from a local HF folder
(`init_from="hf_dinov2:DIR"`, converted by `convert.dinov2_to_params`); the model is used as
loaded, never trained here.

HF keeps DINOv2-L/14's position table at 518 px (37² patches) and resizes it to the input
grid with torch's bicubic interpolation; `vit.resize_posemb` uses jax.image's bicubic
kernel, so at another input size (224 px: 16²) features differ slightly from HF's. At the
table's own size they agree to 1e-4 (tests/models/test_feature_parity.py).

config.model: name="dinov2", width, depth, num_heads, mlp_dim, patch_size, image_size (of
the checkpoint's position table), ln_eps, activation.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from rew_jax import config as config_lib
from rew_jax import registry
from rew_jax.errors import ConfigError
from rew_jax.models import base
from rew_jax.models import convert
from rew_jax.models import layers
from rew_jax.models import vit


def default_config() -> ml_collections.ConfigDict:
  """DINOv2-L/14 (facebook/dinov2-large): 1024 wide, 24 layers, position table at 518 px."""
  return ml_collections.ConfigDict(dict(
      name="dinov2", width=1024, depth=24, num_heads=16, mlp_dim=4096, patch_size=14,
      image_size=518, ln_eps=1e-6, activation="gelu"))


@dataclasses.dataclass(frozen=True)
class Dinov2Spec:
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  patch_size: int
  image_size: int
  ln_eps: float
  activation: str

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size


def parse_config(config: Mapping[str, Any]) -> Dinov2Spec:
  merged = config_lib.merge(default_config(), config, "model").to_dict()
  merged.pop("name")
  if merged["width"] % merged["num_heads"]:
    raise ConfigError("config.model.width must be a multiple of num_heads")
  if merged["activation"] not in layers.ACTIVATIONS:
    raise ConfigError(f"config.model.activation {merged['activation']!r} not in "
                      f"{sorted(layers.ACTIVATIONS)}")
  return Dinov2Spec(**merged)


def spec_from_hf(hf: Mapping[str, Any]) -> dict[str, Any]:
  """The config.model fields of an HF Dinov2Config (as a dict, e.g. config.json)."""
  width = hf.get("hidden_size", 768)
  act = {"gelu": "gelu", "gelu_new": "gelu_tanh", "quick_gelu": "quick_gelu"}
  if hf.get("use_swiglu_ffn"):
    raise convert.CheckpointError("DINOv2 with SwiGLU MLPs (the giant model) is not supported")
  return dict(width=width, depth=hf.get("num_hidden_layers", 12),
              num_heads=hf.get("num_attention_heads", 12),
              mlp_dim=int(width * hf.get("mlp_ratio", 4)), patch_size=hf.get("patch_size", 14),
              image_size=hf.get("image_size", 518), ln_eps=hf.get("layer_norm_eps", 1e-6),
              activation=act.get(hf.get("hidden_act", "gelu"), "gelu"))


class LayerScale(nn.Module):
  """x · scale (one learned factor per channel)."""

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", layers.partitioned(nn.initializers.ones, ("embed",)),
                       (x.shape[-1],), jnp.float32)
    return x * scale.astype(x.dtype)


class Block(nn.Module):
  """x + ls_1(attn(ln_1(x))); x + ls_2(mlp(ln_2(x)))."""
  spec: Dinov2Spec

  @nn.compact
  def __call__(self, x):
    spec = self.spec
    h = layers.layer_norm(spec.ln_eps, jnp.float32, name="ln_1")(x)
    h, _ = layers.MultiHeadAttention(spec.num_heads, name="attn")(h, None)
    x = x + LayerScale(name="ls_1")(h)
    h = layers.layer_norm(spec.ln_eps, jnp.float32, name="ln_2")(x)
    h = layers.Mlp(spec.mlp_dim, spec.activation, name="mlp")(h)
    return x + LayerScale(name="ls_2")(h)


class Dinov2(nn.Module):
  """images [B,I,I,3] (normalised with ImageNet statistics) → tokens [B,N,D] after the final
  LayerNorm; token 0 is the image feature."""
  spec: Dinov2Spec

  @nn.compact
  def __call__(self, images):
    spec = self.spec
    x = nn.Conv(spec.width, (spec.patch_size,) * 2, strides=(spec.patch_size,) * 2,
                padding="VALID", param_dtype=jnp.float32,
                kernel_init=layers.partitioned(layers.default_kernel_init,
                                               (None, None, None, "embed")),
                bias_init=layers.partitioned(nn.initializers.zeros, ("embed",)),
                name="patch_embed")(images.astype(jnp.float32))
    batch, gh, gw, width = x.shape
    if gh != gw:
      raise ValueError(f"images of {images.shape[1:3]} give a non-square patch grid")
    x = x.reshape(batch, gh * gw, width)
    cls = self.param("cls_token", layers.partitioned(layers.default_kernel_init, ("embed",)),
                     (width,))
    posemb = self.param("pos_embedding",
                        layers.partitioned(layers.default_kernel_init, ("pos", "embed")),
                        (spec.grid**2 + 1, width))
    x = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, width)), x], axis=1)
    x = x + vit.resize_posemb(posemb, gh)[None]
    for i in range(spec.depth):
      x = Block(spec, name=f"blocks_{i}")(x)
    return layers.layer_norm(spec.ln_eps, jnp.float32, name="ln_final")(x)


@registry.MODELS.register("dinov2")
class Dinov2Model(base.FrozenImageModel):
  """DINOv2 behind the model interface: `hf_dinov2:DIR` weights, the `embed` prediction
  function ({"embedding": [B, D]}, the class token). A frozen feature model: evaluated
  with `total_steps=0` (rew_jax/evaluators/checkpoint_eval.py), not trained."""

  name = "dinov2"

  @classmethod
  def default_config(cls):
    return default_config()

  def __init__(self, config):
    super().__init__(config)
    self.spec = parse_config(config)
    self.module = Dinov2(self.spec)

  @property
  def loaders(self) -> Mapping[str, base.Loader]:
    return {"hf_dinov2": self._load}

  def _load(self, path: str, params) -> Any:
    del params  # Every weight comes from the checkpoint.
    convert.require_dir(path, "a local HF DINOv2 folder (Dinov2Model, e.g. dinov2-large)")
    return convert.dinov2_to_params(convert.read_state_dict(path), self.spec.depth,
                                    self.spec.num_heads, source=path)

  def embedding(self, features):
    return features[:, 0]  # The class token.
