"""GiT: a CLIP-style ViT image encoder and a GIT text decoder (GER-ALD's model).

Dimensions:
  B  batch       I  image side      N  image tokens (G² + 1)   P  prompt length
  T  target len  L  N + P           D  decoder width           V  vocabulary
  R  beams       NL decoder layers  H  heads                   K  head width

Forward (training): images [B,I,I,3], prompt [B,P] int32, target_input [B,T] int32
(0 = padding) → logits [B,T,V] over target positions only — the vocabulary projection
never runs over image or prompt positions.

Decoding with a KV cache (`decoding.py` drives it):
  prefill(images, prompt) → cache {prefix_k, prefix_v [NL,B,L,H,K], prefix_mask [B,L],
                                   prompt_len [B]}
  decode_step(tokens [B,R], cache + {k, v [NL,B,R,T,H,K]}, index) → logits [B,R,V], cache
The image and prompt are encoded once per example and shared by all R beams.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from rew_jax import registry
from rew_jax.errors import ConfigError
from rew_jax.models import layers, text_decoder, vit

BOS_ID = 101  # [CLS]
EOS_ID = 102  # [SEP]
PAD_ID = 0

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def default_config() -> ml_collections.ConfigDict:
  """GiT-Large as in GER-ALD: ViT-L/14 at 224 px + 6-layer, 768-wide GIT decoder."""
  return ml_collections.ConfigDict(dict(
      name="git",
      variant="L/14",
      image_size=224,
      vit=dict(activation="quick_gelu", ln_eps=1e-5, drop_path=0.0),
      decoder=dict(num_layers=6, hidden_size=768, num_heads=12, mlp_dim=3072, dropout=0.1,
                   attention_dropout=0.0, activation="gelu", ln_eps=1e-12),
      vocab_size=30522,
      max_prompt_len=20,
      max_target_len=44,
      dtype="float32",
      remat=False,  # Saves activation memory only together with scan_layers (XLA).
      scan_layers=False,
  ))


@dataclasses.dataclass(frozen=True)
class GiTSpec:
  vit: vit.ViTSpec
  decoder: text_decoder.DecoderSpec
  max_prompt_len: int
  max_target_len: int
  dtype: Any
  remat: bool
  scan_layers: bool


_TOP_KEYS = {"name", "variant", "image_size", "vit", "decoder", "vocab_size", "max_prompt_len",
             "max_target_len", "dtype", "remat", "scan_layers"}


def parse_config(config: Mapping[str, Any] | GiTSpec) -> GiTSpec:
  """config.model (ConfigDict or dict) → GiTSpec; unknown keys are a ConfigError."""
  if isinstance(config, GiTSpec):
    return config
  config = dict(config.to_dict() if hasattr(config, "to_dict") else config)
  unknown = set(config) - _TOP_KEYS
  if unknown:
    raise ConfigError(f"config.model has unknown keys {sorted(unknown)}; known: "
                      f"{sorted(_TOP_KEYS)}")
  base = default_config().to_dict()
  base.update({k: v for k, v in config.items() if k not in ("vit", "decoder")})
  vit_overrides = dict(base["vit"], **dict(config.get("vit") or {}))
  dec = dict(base["decoder"], **dict(config.get("decoder") or {}))
  known_dec = {f.name for f in dataclasses.fields(text_decoder.DecoderSpec)}
  if set(dec) - known_dec:
    raise ConfigError(f"config.model.decoder has unknown keys {sorted(set(dec) - known_dec)}")
  if base["dtype"] not in DTYPES:
    raise ConfigError(f"config.model.dtype {base['dtype']!r} not in {sorted(DTYPES)}")
  dec.setdefault("vocab_size", base["vocab_size"])
  dec["vocab_size"] = base["vocab_size"]
  dec.setdefault("max_positions", base["max_prompt_len"] + base["max_target_len"])
  if dec["hidden_size"] % dec["num_heads"]:
    raise ConfigError("config.model.decoder.hidden_size must be a multiple of num_heads")
  return GiTSpec(
      vit=vit.parse_variant(base["variant"], base["image_size"], **vit_overrides),
      decoder=text_decoder.DecoderSpec(**dec),
      max_prompt_len=int(base["max_prompt_len"]),
      max_target_len=int(base["max_target_len"]),
      dtype=DTYPES[base["dtype"]],
      remat=bool(base["remat"]),
      scan_layers=bool(base["scan_layers"]))


@registry.MODELS.register("git")
class GiT(nn.Module):
  """The encoder-decoder; `config` is config.model (see `default_config`)."""
  config: Any

  def setup(self):
    spec = self.spec = parse_config(self.config)
    dec = spec.decoder
    self.encoder = vit.VisionTransformer(spec.vit, dtype=spec.dtype, remat=spec.remat,
                                         scan_layers=spec.scan_layers)
    self.visual_dense = nn.Dense(
        dec.hidden_size, dtype=spec.dtype, param_dtype=jnp.float32,
        kernel_init=layers.partitioned(layers.default_kernel_init, ("vis_embed", "embed")),
        bias_init=layers.partitioned(nn.initializers.zeros, ("embed",)))
    # GIT normalises the projected image tokens with the vision tower's epsilon.
    self.visual_ln = layers.layer_norm(spec.vit.ln_eps, spec.dtype)
    self.embed = text_decoder.TextEmbed(dec, dtype=spec.dtype)
    self.decoder = text_decoder.DecoderStack(dec, dtype=spec.dtype, remat=spec.remat,
                                             scan_layers=spec.scan_layers)
    self.head = nn.Dense(
        dec.vocab_size, dtype=spec.dtype, param_dtype=jnp.float32,
        kernel_init=layers.partitioned(layers.default_kernel_init, ("embed", "vocab")),
        bias_init=layers.partitioned(nn.initializers.zeros, ("vocab",)))

  def encode(self, images, train: bool = False):
    """images [B,I,I,3] → image tokens in decoder width [B,N,D]."""
    x = self.encoder(images, train=train)
    return self.visual_ln(self.visual_dense(x))

  def logits(self, x):
    x = layers.constrain(x, ("batch", "length", "act_embed"))
    y = self.head(x).astype(jnp.float32)
    return layers.constrain(y, ("batch", "length", "act_vocab"))

  def __call__(self, images, prompt_tokens, target_tokens, train: bool = False):
    """→ logits [B,T,V] (float32) for the target positions."""
    if prompt_tokens.shape[1] + target_tokens.shape[1] > self.spec.decoder.max_positions:
      raise ValueError(f"prompt + target length {prompt_tokens.shape[1]} + "
                       f"{target_tokens.shape[1]} exceeds the {self.spec.decoder.max_positions} "
                       "text positions (model.max_prompt_len + model.max_target_len)")
    visual = self.encode(images, train)
    num_image = visual.shape[1]
    positions = text_decoder.text_positions(prompt_tokens, target_tokens)
    text = self.embed(jnp.concatenate([prompt_tokens, target_tokens], axis=1), positions,
                      deterministic=not train)
    x = jnp.concatenate([visual, text.astype(visual.dtype)], axis=1)
    mask = text_decoder.git_mask(num_image, prompt_tokens, target_tokens)
    x, _ = self.decoder(x, mask, train=train)
    return self.logits(x[:, num_image + prompt_tokens.shape[1]:])

  def prefill(self, images, prompt_tokens):
    """Encodes images and prompts once: the prefix keys/values of every layer."""
    visual = self.encode(images)
    batch, num_image = visual.shape[:2]
    empty = jnp.zeros((batch, 0), jnp.int32)
    positions = text_decoder.text_positions(prompt_tokens, empty)
    text = self.embed(prompt_tokens, positions)
    x = jnp.concatenate([visual, text.astype(visual.dtype)], axis=1)
    mask = text_decoder.git_mask(num_image, prompt_tokens, empty)
    _, (k, v) = self.decoder(x, mask)
    prefix_mask = mask[:, 0, 0]  # Row of the first image token: validity of each key.
    prompt_len = jnp.sum(prompt_tokens != PAD_ID, axis=1).astype(jnp.int32)
    return dict(prefix_k=k, prefix_v=v, prefix_mask=prefix_mask, prompt_len=prompt_len)

  def decode_step(self, tokens, cache, decode_index):
    """tokens [B,R] at target slot `decode_index` → (logits [B,R,V], cache)."""
    positions = cache["prompt_len"][:, None] + decode_index
    x = self.embed(tokens, jnp.broadcast_to(positions, tokens.shape))
    layer_cache = {k: cache[k] for k in ("prefix_k", "prefix_v", "k", "v")}
    x, updated = self.decoder(x, cache["prefix_mask"], layer_cache, decode_index)
    return self.logits(x), dict(cache, **updated)


def init_target_cache(prefix: Mapping[str, jax.Array], num_beams: int, max_len: int,
                      dtype=None) -> dict[str, jax.Array]:
  """Adds zeroed target keys/values [NL,B,R,T,H,K] to a `prefill` result."""
  nl, batch, _, heads, head_dim = prefix["prefix_k"].shape
  dtype = dtype or prefix["prefix_k"].dtype
  zeros = jnp.zeros((nl, batch, num_beams, max_len, heads, head_dim), dtype)
  return dict(prefix, k=zeros, v=zeros)


def build(config) -> GiT:
  return GiT(config)


def dummy_inputs(spec: GiTSpec, batch: int = 1):
  """Zero inputs of the configured shapes (for init and eval_shape)."""
  size = spec.vit.image_size
  return (jnp.zeros((batch, size, size, 3), jnp.float32),
          jnp.zeros((batch, spec.max_prompt_len), jnp.int32),
          jnp.zeros((batch, spec.max_target_len), jnp.int32))
