"""Zero-shot fine-grained classification (the paper's Flowers, SUN397, Food, Aircraft, Sports100
table) with the generative model: the dataset's class names are the only allowed answers.

Two modes (`mode`):
  trie        class names (through `class_template`, tokenized, EOS-terminated) become a
              prefix trie; `predict_fn(params, batch, trie=trie) -> {"rows": int [B] or
              [B, R]}` decodes under it (`decoding.constrained_beam_search`, then
              `rows` = trie leaf rows = class indices; the first beam decides).
  likelihood  every class name is scored by the model's likelihood;
              `predict_fn(params, batch, class_tokens=T) -> {"scores": float [B, C]}` where
              `T` int32 [C, L] holds each name's tokens, EOS, then 0-padding; argmax decides.

Data: a TFDS random-access source (`tfds.data_source(dataset, split=...)`, class names from
the builder's `features[label_key].names`), or any injected sequence of examples with the
same keys plus `class_names`. Images may be decoded arrays (TFDS) or encoded bytes. Batches
hold `image` float32 [B, H, W, 3], `prompt` int32 [B, P] (the fixed question) and `mask`.
Datasets absent from TFDS (FGVC-Aircraft, Sports100) come in through `source=` or a TFDS
builder of their own.
"""

from __future__ import annotations

import io
import os
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from rew_jax.data import ops as ops_lib
from rew_jax.errors import ConfigError, UserError
from rew_jax.evaluators import common
from rew_jax.models import trie as trie_lib
from rew_jax.registry import EVALUATORS

DEFAULT_PP = ("resize_crop(224)|normalize('clip')|"
              "tokenize(key='prompt', bos=True, max_len=20)|pad(20, key='prompt')")
MODES = ("trie", "likelihood")


def clean_class_name(name: str) -> str:
  """TFDS label names → natural text: "/a/abbey" → "abbey", "apple_pie" → "apple pie"."""
  name = name.strip().rstrip("/")
  if name.startswith("/"):  # SUN397 style "/b/bakery/shop": drop the letter bucket.
    parts = [p for p in name.split("/") if p]
    name = " ".join(reversed(parts[1:])) if len(parts) > 1 else parts[0]
  return " ".join(name.replace("_", " ").split())


def open_tfds(dataset: str, split: str, data_dir: str | None = None, label_key: str = "label"):
  """(random-access source, class names) of a TFDS dataset prepared on disk."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(dataset, data_dir=data_dir)
    names = list(builder.info.features[label_key].names)
    source = tfds.data_source(dataset, split=split, data_dir=data_dir)
  except Exception as e:  # tfds raises many types for an absent or unprepared dataset.
    raise UserError(f"TFDS dataset {dataset!r} split {split!r} (data_dir {data_dir!r}) cannot "
                    f"be opened: {type(e).__name__}: {e}") from None
  return source, names


def class_token_table(names_tokens: Sequence[Sequence[int]], eos_id: int) -> np.ndarray:
  """int32 [C, L]: tokens, EOS, then 0-padding, L = longest name + 1."""
  width = max(len(t) for t in names_tokens) + 1
  table = np.zeros((len(names_tokens), width), np.int32)
  for i, toks in enumerate(names_tokens):
    table[i, :len(toks)] = toks
    table[i, len(toks)] = eos_id
  return table


@EVALUATORS.register("zeroshot")
class Evaluator(common.Evaluator):
  """Top-1 accuracy of choosing the class name; see the module docstring."""

  SHARED_KWARGS = ("tokenizer",)

  def __init__(self, predict_fn: Callable[..., Mapping[str, Any]], *, dataset: str = "",
               split: str = "test", data_dir: str | None = None,
               source: Sequence[Mapping[str, Any]] | None = None,
               class_names: Sequence[str] | None = None, label_key: str = "label",
               image_key: str = "image", mode: str = "trie", class_template: str = "{}",
               prompt: str = "what is this?", tokenizer=None, tokenizer_kind: str = "bert",
               tokenizer_path: str | None = None, pp: str = DEFAULT_PP, batch_size: int = 32,
               max_examples: int = 0, predict_kwargs: Mapping[str, Any] | None = None,
               name: str = "zeroshot", workdir: str | None = None):
    if mode not in MODES:
      raise ConfigError(f"zeroshot mode {mode!r}: expected one of {', '.join(MODES)}")
    self.predict_fn, self.name, self.workdir, self.mode = predict_fn, name, workdir, mode
    if source is None:
      if not dataset:
        raise ConfigError("zeroshot needs `dataset` (a TFDS name) or an injected `source`")
      source, tfds_names = open_tfds(dataset, split, data_dir, label_key)
      class_names = class_names or [clean_class_name(n) for n in tfds_names]
    if not class_names:
      raise ConfigError(f"zeroshot {name}: no class names")
    self.source, self.class_names = source, list(class_names)
    self.label_key, self.image_key, self.prompt = label_key, image_key, prompt
    n = len(source)
    self.indices = list(range(min(n, max_examples) if max_examples else n))
    if not self.indices:
      raise UserError(f"zeroshot {name}: the data source is empty")
    if tokenizer is None:
      from rew_jax.data.tokenizers import load_tokenizer  # pylint: disable=g-import-not-at-top
      tokenizer = load_tokenizer(tokenizer_kind, tokenizer_path)
    texts = [class_template.format(c) for c in self.class_names]
    tokens = tokenizer.encode_batch(texts)
    empty = [t for t, ids in zip(texts, tokens) if not ids]
    if empty:
      raise ConfigError(f"class names that tokenize to nothing: {empty[:5]}")
    # Several classes with one tokenization (e.g. case-only differences) cannot be told apart;
    # the trie keeps the first, the likelihood mode scores them equal (first wins as well).
    self.class_tokens = class_token_table(tokens, tokenizer.eos_id)
    self.trie = trie_lib.build_trie(tokens, tokenizer.eos_id) if mode == "trie" else None
    self.pp = ops_lib.get_preprocess(pp)
    self.batch_size = batch_size
    self.predict_kwargs = dict(predict_kwargs or {})

  def load(self, index: int) -> dict[str, Any]:
    example = self.source[index]
    image = example[self.image_key]
    if isinstance(image, (bytes, bytearray)):
      with Image.open(io.BytesIO(image)) as img:
        image = np.asarray(img.convert("RGB"))
    image = np.asarray(image)
    if image.ndim == 2:
      image = np.repeat(image[..., None], 3, axis=-1)
    return self.pp({"image": image, "prompt": self.prompt, "_where": f"example {index}"})

  def _label(self, index: int) -> int:
    return int(self.source[index][self.label_key])

  def predict(self, params) -> list[int]:
    kwargs = dict(self.predict_kwargs)
    if self.mode == "trie":
      kwargs["trie"] = self.trie
    else:
      kwargs["class_tokens"] = self.class_tokens
    # Several processes: each predicts its share, all get every prediction.
    out = common.predict_all(self.predict_fn, params, self.indices, self.batch_size, self.load,
                             **kwargs)
    if self.mode == "trie":
      rows = out["rows"]
      return (rows[:, 0] if rows.ndim == 2 else rows).astype(int).tolist()
    return np.argmax(out["scores"], axis=-1).astype(int).tolist()

  def run(self, params, *, step: int | None = None) -> Iterator[tuple[str, float]]:
    preds = self.predict(params)
    labels = [self._label(i) for i in self.indices]
    correct = [int(p == y) for p, y in zip(preds, labels)]
    top1 = 100.0 * sum(correct) / len(correct)
    directory = self.output_dir(step)
    if directory:
      name = lambda c: self.class_names[c] if 0 <= c < len(self.class_names) else ""
      rows = [{"index": i, "label": y, "label_name": name(y), "pred": p, "pred_name": name(p),
               "correct": c} for i, y, p, c in zip(self.indices, labels, preds, correct)]
      common.write_table(os.path.join(directory, "table.tsv"), rows)
      common.write_metrics(os.path.join(directory, "metrics.json"),
                           {"top1": top1, "num_examples": len(correct), "mode": self.mode,
                            "num_classes": len(self.class_names)})
    yield f"{self.name}/top1", top1
