"""CLIP's image embedding as a frozen feature model: the registered "clip_image".

Dimensions: B batch, I image side, N tokens, D width, E projection width.

The CLIP vision tower (`vit.VisionTransformer`: the same network GiT's encoder is, with
`ln_post` on every token) followed by CLIP's `visual_projection`, a Dense D → E without
bias, applied to the class token: exactly CLIP's `image_embeds` before normalisation.
Weights come from a local HF CLIP folder (`init_from="hf_clip:DIR"`, a CLIPModel or
CLIPVisionModelWithProjection; converted by `convert.clip_image_to_params`).

config.model: name="clip_image", variant ("L/14"), image_size, vit (overrides of the
variant: width, depth, num_heads, mlp_dim, activation, ln_eps), projection_dim.
"""

from __future__ import annotations

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
  """CLIP ViT-L/14 at 224 px (openai/clip-vit-large-patch14): 768-d image embeddings."""
  return ml_collections.ConfigDict(dict(
      name="clip_image", variant="L/14", image_size=224,
      # width, depth, num_heads, mlp_dim, patch_size: None takes the variant's.
      vit=dict(activation="quick_gelu", ln_eps=1e-5, drop_path=0.0, width=None, depth=None,
               num_heads=None, mlp_dim=None, patch_size=None),
      projection_dim=768))


def parse_config(config: Mapping[str, Any]) -> tuple[vit.ViTSpec, int]:
  """config.model → (the vision tower's spec, projection width)."""
  merged = config_lib.merge(default_config(), config, "model").to_dict()
  overrides = merged["vit"]
  return (vit.parse_variant(merged["variant"], merged["image_size"], **overrides),
          int(merged["projection_dim"]))


class ClipImage(nn.Module):
  """images [B,I,I,3] (CLIP-normalised) → image embeddings [B,E] (not normalised)."""
  spec: vit.ViTSpec
  projection_dim: int

  def setup(self):
    self.encoder = vit.VisionTransformer(self.spec)
    self.projection = nn.Dense(
        self.projection_dim, use_bias=False, param_dtype=jnp.float32,
        kernel_init=layers.partitioned(layers.default_kernel_init, ("embed", None)))

  def tokens(self, images):
    """The vision tower's tokens [B,N,D] after ln_post (token 0 is CLIP's pooled output)."""
    return self.encoder(images)

  def __call__(self, images):
    return self.projection(self.encoder(images)[:, 0])


@registry.MODELS.register("clip_image")
class ClipImageModel(base.FrozenImageModel):
  """CLIP's projected image embedding behind the model interface: `hf_clip:DIR` weights,
  the `embed` prediction function ({"embedding": [B, E]}). A frozen feature model:
  evaluated with `total_steps=0` (rew_jax/evaluators/checkpoint_eval.py), not trained."""

  name = "clip_image"

  @classmethod
  def default_config(cls):
    return default_config()

  def __init__(self, config):
    super().__init__(config)
    self.spec, self.projection_dim = parse_config(config)
    self.module = ClipImage(self.spec, self.projection_dim)

  @property
  def loaders(self) -> Mapping[str, base.Loader]:
    return {"hf_clip": self._load}

  def _load(self, path: str, params) -> Any:
    del params  # Every weight comes from the checkpoint.
    convert.require_dir(path, "a local HF CLIP folder (CLIPModel or "
                        "CLIPVisionModelWithProjection, e.g. clip-vit-large-patch14)")
    return convert.clip_image_to_params(convert.read_state_dict(path), self.spec, source=path)

