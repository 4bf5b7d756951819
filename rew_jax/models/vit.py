"""CLIP-style Vision Transformer: the image encoder of GiT.

Dimensions:
  B  batch            I  image side (pixels)     P  patch side
  G  grid side (I/P)  N  tokens = G² + 1 (class token first)
  D  width            F  MLP width

Architecture (as CLIP's visual tower, which GIT and GER-ALD start from): patch embedding
without bias, class token, learned position embeddings, `ln_pre`, pre-LN blocks with
quick_gelu MLPs, `ln_post` on every token. Position embeddings are resized bicubically
when the input resolution differs from the one they were trained at.
"""

from __future__ import annotations

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from rew_jax.errors import ConfigError
from rew_jax.models import layers

# name → (width, depth, heads, mlp width), as in big_vision / CLIP.
VARIANTS = {
    "mu": (32, 2, 2, 128),  # Tiny, for tests.
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "M": (512, 12, 8, 2048),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "H": (1280, 32, 16, 5120),
    "g": (1408, 40, 16, 6144),
}


@dataclasses.dataclass(frozen=True)
class ViTSpec:
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  patch_size: int
  image_size: int
  activation: str = "quick_gelu"
  ln_eps: float = 1e-5
  drop_path: float = 0.0

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_tokens(self) -> int:
    return self.grid**2 + 1


def parse_variant(variant: str, image_size: int, **overrides) -> ViTSpec:
  """'L/14' → ViTSpec; keyword overrides (width=..., depth=...) replace preset fields."""
  match = re.fullmatch(r"(\w+)/(\d+)", variant)
  if not match or match.group(1) not in VARIANTS:
    raise ConfigError(f"model.variant {variant!r} is not NAME/PATCH with NAME one of "
                      f"{', '.join(VARIANTS)} (e.g. 'L/14')")
  width, depth, heads, mlp = VARIANTS[match.group(1)]
  spec = dict(width=width, depth=depth, num_heads=heads, mlp_dim=mlp,
              patch_size=int(match.group(2)), image_size=image_size)
  unknown = set(overrides) - {f.name for f in dataclasses.fields(ViTSpec)}
  if unknown:
    raise ConfigError(f"model.vit has unknown keys {sorted(unknown)}")
  spec.update({k: v for k, v in overrides.items() if v is not None})
  if image_size % spec["patch_size"]:
    raise ConfigError(f"model.image_size {image_size} is not a multiple of the patch size "
                      f"{spec['patch_size']}")
  return ViTSpec(**spec)


def resize_posemb(posemb: jax.Array, new_grid: int) -> jax.Array:
  """[1+G², D] → [1+G'², D]: bicubic resize of the patch part; the class slot is kept."""
  cls, grid = posemb[:1], posemb[1:]
  old = int(round(grid.shape[0]**0.5))
  if old == new_grid:
    return posemb
  grid = grid.reshape(old, old, -1)
  grid = jax.image.resize(grid, (new_grid, new_grid, grid.shape[-1]), method="bicubic")
  return jnp.concatenate([cls, grid.reshape(new_grid * new_grid, -1)], axis=0)


class EncoderBlock(nn.Module):
  """Pre-LN transformer block: x + attn(ln(x)); x + mlp(ln(x))."""
  spec: ViTSpec
  dtype: layers.Dtype = jnp.float32
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, unused=None):
    spec = self.spec
    rng = lambda: self.make_rng("dropout")
    h = layers.layer_norm(spec.ln_eps, self.dtype, name="ln_1")(x)
    h, _ = layers.MultiHeadAttention(spec.num_heads, dtype=self.dtype, name="attn")(h, None)
    x = x + layers.drop_path(h, spec.drop_path, self.deterministic, rng)
    h = layers.layer_norm(spec.ln_eps, self.dtype, name="ln_2")(x)
    h = layers.Mlp(spec.mlp_dim, spec.activation, dtype=self.dtype, name="mlp")(h)
    x = x + layers.drop_path(h, spec.drop_path, self.deterministic, rng)
    x = layers.constrain(x, ("batch", "length", "act_embed"))
    return x, None


class VisionTransformer(nn.Module):
  """images [B,I,I,3] (already normalised) → tokens [B,N,D] after ln_post."""
  spec: ViTSpec
  dtype: layers.Dtype = jnp.float32
  remat: bool = False
  scan_layers: bool = False

  @nn.compact
  def __call__(self, images, train: bool = False):
    spec = self.spec
    x = nn.Conv(spec.width, (spec.patch_size,) * 2, strides=(spec.patch_size,) * 2,
                padding="VALID", use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                kernel_init=layers.partitioned(layers.default_kernel_init,
                                               (None, None, None, "embed")),
                name="patch_embed")(images.astype(self.dtype))
    batch, gh, gw, width = x.shape
    x = x.reshape(batch, gh * gw, width)
    cls = self.param("class_embedding",
                     layers.partitioned(layers.default_kernel_init, ("embed",)), (width,))
    posemb = self.param("pos_embedding",
                        layers.partitioned(layers.default_kernel_init, ("pos", "embed")),
                        (spec.num_tokens, width))
    if gh != spec.grid or gw != spec.grid:
      if gh != gw:
        raise ValueError(f"images of {images.shape[1:3]} give a non-square patch grid")
      posemb = resize_posemb(posemb, gh)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (batch, 1, width)), x], axis=1)
    x = x + posemb.astype(x.dtype)[None]
    x = layers.constrain(x, ("batch", "length", "act_embed"))
    x = layers.layer_norm(spec.ln_eps, self.dtype, name="ln_pre")(x)

    block = EncoderBlock
    if self.remat:
      block = nn.remat(block, prevent_cse=not self.scan_layers)
    if self.scan_layers:
      stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True,
                                                                       "dropout": True},
                      length=spec.depth, metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = stack(spec, self.dtype, not train, name="blocks")(x, None)
    else:
      for i in range(spec.depth):
        x, _ = block(spec, self.dtype, not train, name=f"blocks_{i}")(x)
    return layers.layer_norm(spec.ln_eps, self.dtype, name="ln_post")(x)
