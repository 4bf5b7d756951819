"""GiT's prediction functions, which the evaluators call by name (`pred` in an evals block)
through `GiTModel.predict_fns` (rew_jax/models/git.py).

Dimensions: B batch, R beams, T generated length, C classes, L class-name length + 1 (EOS),
V vocabulary, D embedding width.

All are pure and un-jitted, `fn(params, batch, **kw) -> dict of arrays`; the caller jits
them (e.g. `jax.jit(fn)`; a trie passed as keyword is a pytree and traces like an array).
Batches carry `image` float32 [B, H, W, 3] and `prompt` int32 [B, P].

  decode_rows       KB-constrained beam search over the name trie → rows [B, R] (KB rows)
  ald_rows          GER-ALD: unconstrained beam search of code_len + 1 steps, code → row
                    (-1: not a code; `first_valid`: the best beam that is a code)
  ald_trie_rows     ALD codes under the KB constraint: beam search over the code trie → rows
  generate          unconstrained beam search → tokens [B, R, T] (for `codes` / `text`)
  class_rows        constrained beam search over a trie given per call (zero-shot classes)
  class_likelihood  log p(class name + EOS | image, prompt) → scores [B, C]
  embed             image embedding [B, D] (the ViT's class token) for kNN matching
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from rew_jax import config as config_lib
from rew_jax.data.tokenizers import BERT_BOS_ID, BERT_PAD_ID
from rew_jax.models import trie as trie_lib
from rew_jax.models import decoding
from rew_jax.models import git_config


def class_log_likelihood(model, params, images, prompt_tokens, class_tokens, *,
                         length_norm: bool = False, bos_id: int = BERT_BOS_ID):
  """float32 [B, C]: summed (or, with `length_norm`, mean) log-probability of each class's
  tokens (class_tokens int32 [C, L]: tokens, EOS, then 0-padding) after the image and prompt.

  The image and prompt are encoded once (prefill); the C names are teacher-forced as C
  "beams" of the KV cache, one decoder step per position.
  """
  num_classes, length = class_tokens.shape
  cache = model.apply(params, images, prompt_tokens, method="prefill")
  cache = decoding.init_target_cache(cache, num_classes, length)
  inputs = jnp.concatenate([jnp.full((num_classes, 1), bos_id, jnp.int32),
                            class_tokens[:, :-1].astype(jnp.int32)], axis=1)
  batch = images.shape[0]

  def step(cache, i):
    tokens = jnp.broadcast_to(inputs[:, i], (batch, num_classes))
    logits, cache = model.apply(params, tokens, cache, i, method="decode_step")
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B, C, V]
    target = class_tokens[:, i]
    picked = jnp.take_along_axis(logp, jnp.broadcast_to(target[None, :, None],
                                                        (batch, num_classes, 1)), axis=-1)[..., 0]
    return cache, jnp.where(target[None] != BERT_PAD_ID, picked, 0.0)

  _, per_step = jax.lax.scan(step, cache, jnp.arange(length))
  total = per_step.sum(axis=0)
  if length_norm:
    total = total / jnp.maximum((class_tokens != BERT_PAD_ID).sum(axis=1), 1)[None]
  return total


def make(model, *, name_trie: trie_lib.TokenTrie | None = None,
         code_trie: trie_lib.TokenTrie | None = None, code_len: int = 4, num_beams: int = 4,
         max_len: int | None = None, alpha: float = 0.6, first_valid: bool = False,
         length_norm: bool = False) -> dict[str, Callable]:
  """name → prediction function for `model` (the flax `git.GiT`); functions needing an
  absent trie are left out. `max_len` defaults to the model's max_target_len; `code_len` is
  the longest ALD code in tokens (GER-ALD's 3 + the collision slot; EOS not counted)."""
  max_len = max_len or git_config.parse_config(model.config).max_target_len
  fns: dict[str, Callable] = {}

  def generate(params, batch):
    out = decoding.beam_search(model, params, batch["image"], batch["prompt"],
                               num_beams=num_beams, max_len=max_len, alpha=alpha)
    return {"tokens": out.sequences, "scores": out.scores}

  def class_rows(params, batch, *, trie):
    out = decoding.constrained_beam_search(model, params, batch["image"], batch["prompt"], trie,
                                           num_beams=num_beams, max_len=max_len, alpha=alpha)
    return {"rows": out.rows, "scores": out.scores}

  def class_likelihood(params, batch, *, class_tokens):
    return {"scores": class_log_likelihood(model, params, batch["image"], batch["prompt"],
                                           jnp.asarray(class_tokens), length_norm=length_norm)}

  def embed(params, batch):
    tokens = model.apply(params, batch["image"], method=lambda m, x: m.encoder(x))
    return {"embedding": tokens[:, 0]}

  fns.update(generate=generate, class_rows=class_rows, class_likelihood=class_likelihood,
             embed=embed)
  if name_trie is not None:
    fns["decode_rows"] = lambda params, batch: class_rows(params, batch, trie=name_trie)
  if code_trie is not None:

    def ald_rows(params, batch):
      out = decoding.ald_decode(model, params, batch["image"], batch["prompt"], code_trie,
                                code_len=code_len, num_beams=num_beams, alpha=alpha,
                                first_valid=first_valid)
      # The tokens of the beam that decided (the first valid one with `first_valid`).
      pick = (jnp.argmax(out.beams.rows >= 0, axis=1) if first_valid
              else jnp.zeros(out.rows.shape, jnp.int32))
      tokens = jnp.take_along_axis(out.beams.sequences, pick[:, None, None], axis=1)[:, 0]
      return {"rows": out.rows, "tokens": tokens}

    def ald_trie_rows(params, batch):
      out = decoding.constrained_beam_search(model, params, batch["image"], batch["prompt"],
                                             code_trie, num_beams=num_beams,
                                             max_len=code_len + 1, alpha=alpha)
      return {"rows": out.rows, "tokens": out.sequences}

    fns["ald_rows"] = ald_rows
    fns["ald_trie_rows"] = ald_trie_rows
  return fns


def default_config() -> ml_collections.ConfigDict:
  """The `config.predict` block: every option of `make` with its default. name_trie /
  code_trie: paths of `trie.save` files (e.g. the KB index's name_trie.npz), "" for none;
  max_len 0: the model's max_target_len."""
  return ml_collections.ConfigDict(dict(
      name_trie="", code_trie="", code_len=4, num_beams=4, max_len=0, alpha=0.6,
      first_valid=False, length_norm=False))


def from_config(model, predict_config=None) -> dict[str, Callable]:
  """Jitted prediction functions over a train state's `params` (not the variables dict),
  from a `config.predict` block (merged over `default_config()`)."""
  c = config_lib.merge(default_config(), predict_config, "predict").to_dict()
  paths = {key: c.pop(key) for key in ("name_trie", "code_trie")}
  tries = {key: trie_lib.load(path) if path else None for key, path in paths.items()}
  fns = make(model, **tries, **c)

  def over_params(fn):
    return jax.jit(lambda params, batch, **kw: fn({"params": params}, batch, **kw))

  return {name: over_params(fn) for name, fn in fns.items()}
