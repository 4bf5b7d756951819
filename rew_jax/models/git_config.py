"""GiT's `config.model` block: its defaults and its parsed, checked form (`GiTSpec`).

Kept apart from the network so that the weight converters and decoding read a GiT config
without importing the registered model (which imports them).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp
import ml_collections

from rew_jax import config as config_lib
from rew_jax.errors import ConfigError
from rew_jax.models import text_decoder, vit

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def default_config() -> ml_collections.ConfigDict:
  """GiT-Large as in GER-ALD: ViT-L/14 at 224 px + 6-layer, 768-wide GIT decoder."""
  return ml_collections.ConfigDict(dict(
      name="git",
      variant="L/14",
      image_size=224,
      # width, depth, num_heads, mlp_dim, patch_size: None takes the variant's.
      vit=dict(activation="quick_gelu", ln_eps=1e-5, drop_path=0.0, width=None, depth=None,
               num_heads=None, mlp_dim=None, patch_size=None),
      # max_positions 0: max_prompt_len + max_target_len.
      decoder=dict(num_layers=6, hidden_size=768, num_heads=12, mlp_dim=3072, dropout=0.1,
                   attention_dropout=0.0, activation="gelu", ln_eps=1e-12, max_positions=0),
      vocab_size=30522,
      # A trimmed vocabulary: the path of a `data/vocab.py` file listing the tokenizer ids the
      # model keeps (the rest read as [UNK] and are never predicted). "": all vocab_size ids.
      vocab_ids="",
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
  vocab_ids: tuple[int, ...] | None = None  # The kept tokenizer ids (trimmed vocabulary).
  tokenizer_size: int = 30522  # The tokenizer's vocabulary: ids the model reads and returns.


def parse_config(config: Mapping[str, Any] | GiTSpec) -> GiTSpec:
  """config.model (ConfigDict or dict, merged over `default_config()`) → GiTSpec; unknown
  keys are a ConfigError naming the closest valid ones."""
  if isinstance(config, GiTSpec):
    return config
  base = config_lib.merge(default_config(), config, "model").to_dict()
  vit_overrides, dec = base["vit"], base["decoder"]
  if base["dtype"] not in DTYPES:
    raise ConfigError(f"config.model.dtype {base['dtype']!r} not in {sorted(DTYPES)}")
  vocab_ids = None
  if base["vocab_ids"]:
    from rew_jax.data import vocab  # pylint: disable=g-import-not-at-top
    vocab_ids = vocab.load_ids(base["vocab_ids"], base["vocab_size"])
  dec["vocab_size"] = len(vocab_ids) if vocab_ids else base["vocab_size"]
  dec["max_positions"] = dec["max_positions"] or base["max_prompt_len"] + base["max_target_len"]
  if dec["hidden_size"] % dec["num_heads"]:
    raise ConfigError("config.model.decoder.hidden_size must be a multiple of num_heads")
  return GiTSpec(
      vit=vit.parse_variant(base["variant"], base["image_size"], **vit_overrides),
      decoder=text_decoder.DecoderSpec(**dec),
      max_prompt_len=int(base["max_prompt_len"]),
      max_target_len=int(base["max_target_len"]),
      dtype=DTYPES[base["dtype"]],
      remat=bool(base["remat"]),
      scan_layers=bool(base["scan_layers"]),
      vocab_ids=vocab_ids,
      tokenizer_size=int(base["vocab_size"]))
