"""GiT: a CLIP-style ViT image encoder and a GIT text decoder (GER-ALD's model), and
`GiTModel`, the registered "git" model the train loop and the evaluators use.

Dimensions:
  B  batch       I  image side      N  image tokens (G² + 1)   P  prompt length
  T  target len  L  N + P           D  decoder width           V  vocabulary
  R  beams       NL decoder layers  H  heads                   K  head width

Forward (training): images [B,I,I,3], prompt [B,P] int32, target_input [B,T] int32
(0 = padding) → logits [B,T,V] over target positions only — the vocabulary projection
never runs over image or prompt positions. Training feeds the target shifted right behind
BOS ([CLS]) and predicts the target itself, EOS ([SEP]) included.

Decoding with a KV cache (`decoding.py` drives it):
  prefill(images, prompt) → cache {prefix_k, prefix_v [NL,B,L,H,K], prefix_mask [B,L],
                                   prompt_len [B]}
  decode_step(tokens [B,R], cache + {k, v [NL,B,R,T,H,K]}, index) → logits [B,R,V], cache
The image and prompt are encoded once per example and shared by all R beams.

`config.model` is described by `git_config.default_config()`; special token ids are BERT's
(`rew_jax.data.tokenizers.BERT_*_ID`).
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rew_jax import registry
from rew_jax.data import vocab
from rew_jax.data.tokenizers import BERT_BOS_ID, BERT_PAD_ID
from rew_jax.models import base
from rew_jax.models import convert
from rew_jax.models.decoding import NEG
from rew_jax.models import git_config
from rew_jax.models import git_predict
from rew_jax.models import layers, text_decoder, vit


def default_config() -> ml_collections.ConfigDict:
  """config.model of GiT-Large (see `git_config.default_config`)."""
  return git_config.default_config()


class GiT(nn.Module):
  """The encoder-decoder; `config` is config.model (see `default_config`)."""
  config: Any

  def setup(self):
    spec = self.spec = git_config.parse_config(self.config)
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
    # A trimmed vocabulary (model.vocab_ids): tokenizer id → kept row, and back.
    self.kept_ids = None if spec.vocab_ids is None else np.asarray(spec.vocab_ids, np.int32)
    self.to_row = (None if spec.vocab_ids is None else
                   vocab.compact_table(spec.vocab_ids, spec.tokenizer_size))

  def rows(self, tokens):
    """Tokenizer ids → rows of the embedding and the output layer."""
    return tokens if self.to_row is None else jnp.asarray(self.to_row)[tokens]

  def full_vocab(self, logits):
    """Logits over the kept rows → over every tokenizer id (dropped ids: impossible)."""
    if self.kept_ids is None:
      return logits
    full = jnp.full(logits.shape[:-1] + (self.spec.tokenizer_size,), NEG, logits.dtype)
    return full.at[..., self.kept_ids].set(logits)

  def encode(self, images, train: bool = False):
    """images [B,I,I,3] → image tokens in decoder width [B,N,D]."""
    x = self.encoder(images, train=train)
    return self.visual_ln(self.visual_dense(x))

  def logits(self, x):
    x = layers.constrain(x, ("batch", "length", "act_embed"))
    y = self.head(x).astype(jnp.float32)
    return layers.constrain(y, ("batch", "length", "act_vocab"))

  def __call__(self, images, prompt_tokens, target_tokens, train: bool = False,
               kept_rows: bool = False):
    """→ logits [B,T,V] (float32) for the target positions; with a trimmed vocabulary,
    over the tokenizer's ids, or over the kept rows only when `kept_rows`."""
    if prompt_tokens.shape[1] + target_tokens.shape[1] > self.spec.decoder.max_positions:
      raise ValueError(f"prompt + target length {prompt_tokens.shape[1]} + "
                       f"{target_tokens.shape[1]} exceeds the {self.spec.decoder.max_positions} "
                       "text positions (model.max_prompt_len + model.max_target_len)")
    visual = self.encode(images, train)
    num_image = visual.shape[1]
    positions = text_decoder.text_positions(prompt_tokens, target_tokens)
    text = self.embed(self.rows(jnp.concatenate([prompt_tokens, target_tokens], axis=1)),
                      positions, deterministic=not train)
    x = jnp.concatenate([visual, text.astype(visual.dtype)], axis=1)
    mask = text_decoder.git_mask(num_image, prompt_tokens, target_tokens)
    x, _ = self.decoder(x, mask, train=train)
    logits = self.logits(x[:, num_image + prompt_tokens.shape[1]:])
    return logits if kept_rows else self.full_vocab(logits)

  def prefill(self, images, prompt_tokens):
    """Encodes images and prompts once: the prefix keys/values of every layer."""
    visual = self.encode(images)
    batch, num_image = visual.shape[:2]
    empty = jnp.zeros((batch, 0), jnp.int32)
    positions = text_decoder.text_positions(prompt_tokens, empty)
    text = self.embed(self.rows(prompt_tokens), positions)
    x = jnp.concatenate([visual, text.astype(visual.dtype)], axis=1)
    mask = text_decoder.git_mask(num_image, prompt_tokens, empty)
    _, (k, v) = self.decoder(x, mask)
    prefix_mask = mask[:, 0, 0]  # Row of the first image token: validity of each key.
    prompt_len = jnp.sum(prompt_tokens != BERT_PAD_ID, axis=1).astype(jnp.int32)
    return dict(prefix_k=k, prefix_v=v, prefix_mask=prefix_mask, prompt_len=prompt_len)

  def decode_step(self, tokens, cache, decode_index):
    """tokens [B,R] at target slot `decode_index` → (logits [B,R,V], cache)."""
    positions = cache["prompt_len"][:, None] + decode_index
    x = self.embed(self.rows(tokens), jnp.broadcast_to(positions, tokens.shape))
    layer_cache = {k: cache[k] for k in ("prefix_k", "prefix_v", "k", "v")}
    x, updated = self.decoder(x, cache["prefix_mask"], layer_cache, decode_index)
    return self.full_vocab(self.logits(x)), dict(cache, **updated)


def dummy_inputs(spec: git_config.GiTSpec, batch: int = 1):
  """Zero inputs of the configured shapes (for init and eval_shape)."""
  size = spec.vit.image_size
  return (jnp.zeros((batch, size, size, 3), jnp.float32),
          jnp.zeros((batch, spec.max_prompt_len), jnp.int32),
          jnp.zeros((batch, spec.max_target_len), jnp.int32))


# --------------------------------------------------------------------------------------------
# The registered model: what the train loop and the evaluators use (see models/base.py).
# --------------------------------------------------------------------------------------------


@registry.MODELS.register("git")
class GiTModel(base.Model):
  """GiT behind the model interface: teacher forcing, HF weights and decoding by name.

  `init_from` loaders: `hf_git:DIR` (a HF GitForCausalLM directory: all of the model) and
  `hf_clip:DIR` (a HF CLIP vision directory: the image encoder; the rest keeps its init).
  Prediction functions: see `git_predict` (decode_rows, ald_rows, generate, class_rows,
  class_likelihood, embed), configured by `config.predict`.
  """

  def __init__(self, config):
    super().__init__(config)
    self.spec = git_config.parse_config(config)  # Unknown keys fail here, before any init.
    self.module = GiT(config)

  @classmethod
  def default_config(cls):
    return git_config.default_config()

  @classmethod
  def predict_config(cls):
    return git_predict.default_config()

  def dummy_inputs(self, batch: int = 1):
    return dummy_inputs(self.spec, batch)

  def logits_and_targets(self, params, batch, *, rng, train):
    """The decoder reads `target` shifted right behind BOS, as decoding feeds it; PAD
    positions (after EOS) do not count. With a trimmed vocabulary, logits and targets are
    over its kept rows."""
    target = batch["target"]
    target_in = jnp.concatenate(
        [jnp.full_like(target[:, :1], BERT_BOS_ID), target[:, :-1]], axis=1)
    rngs = {"dropout": rng} if rng is not None else {}
    logits = self.module.apply({"params": params}, batch["image"], batch["prompt"], target_in,
                               train=train, kept_rows=True, rngs=rngs)
    weights = (target != BERT_PAD_ID).astype(jnp.float32)
    if self.spec.vocab_ids is not None:
      target = jnp.asarray(vocab.compact_table(self.spec.vocab_ids,
                                               self.spec.tokenizer_size))[target]
    return logits, target, weights

  @property
  def loaders(self) -> Mapping[str, base.Loader]:
    return {"hf_git": self._load_hf_git, "hf_clip": self._load_hf_clip}

  def _load_hf_git(self, path: str, params) -> Any:
    del params  # Every weight comes from the checkpoint.
    full = dict(self.config.to_dict() if hasattr(self.config, "to_dict") else self.config,
                vocab_ids="")
    loaded = convert.git_to_params(convert.read_state_dict(path), full, path)["params"]
    if self.spec.vocab_ids is None:
      return loaded
    # A trimmed vocabulary keeps the checkpoint's rows of the ids it keeps.
    kept = np.asarray(self.spec.vocab_ids)
    words = loaded["embed"]["word_embeddings"]
    head = loaded["head"]
    return dict(loaded, embed=dict(loaded["embed"], word_embeddings=dict(
        words, embedding=np.asarray(words["embedding"])[kept])),
                head=dict(head, kernel=np.asarray(head["kernel"])[:, kept],
                          bias=np.asarray(head["bias"])[kept]))

  def _load_hf_clip(self, path: str, params) -> Any:
    convert.require_dir(path, "a local HF CLIP folder (CLIPModel, CLIPVisionModel or "
                        "CLIPVisionModelWithProjection, e.g. clip-vit-large-patch14)")
    encoder = convert.clip_vision_to_params(convert.read_state_dict(path), self.config, path)
    return dict(jax.device_get(params), encoder=encoder)

  def predict_fns(self, predict_config=None):
    return git_predict.from_config(self.module, predict_config)
