"""Zero-shot fine-grained classification (the paper's Table 2: Flowers102, SUN397, Food101,
FGVC-Aircraft, Sports100) with the generative model, in the model's own answer space: each
class is a KB entity (rew_jax/evaluators/finegrained.py maps classes to entities, with a
file a person can correct), and decoding may only produce the mapped entities.

Dimensions: B batch, R beams, E mapped entities of a set, L longest entity sequence + 1.

What the model emits for an entity (`entity_target`, the recipe's entity target):
  name  the entity's KB title, tokenized (what the name-trained recipes learn)
  ald   the entity's ALD code from the KB's code table (`codes_path`, default the KB
        index's ald_codes.npz): the same restriction over code tokens instead of names
Two ways to restrict (`mode`):
  trie        the E sequences (EOS-terminated) become a prefix trie; `predict_fn(params,
              batch, trie=trie) -> {"rows": int [B] or [B, R]}` decodes under it (the GiT
              function `class_rows`; rows = trie leaf rows = entity indices; beam 0 decides)
  likelihood  `predict_fn(params, batch, class_tokens=T) -> {"scores": float [B, E]}`, T
              int32 [E, L] each entity's tokens, EOS, 0-padding (`class_likelihood`); argmax
An example is right when the predicted entity is its class's entity. Classes without an
entity are reported (`unmapped_classes`, and listed in metrics.json) and their examples
stay in the denominator; classes sharing one entity cannot be told apart (`shared_entity`).

Metrics per set and over sets: `<name>/<set>/top1`, `<name>/<set>/unmapped_classes`,
`<name>/<set>/unmapped_examples`, `<name>/mean_top1`. Files under
`<workdir>/eval/<name>/[step_<s>/]<set>/` (table.tsv, metrics.json); class maps under
`class_map_dir` (default `<workdir>/eval/<name>/class_maps/<set>.jsonl`), kept across runs.

Each set's examples are a random-access source (`SetExamples`: images may be decoded arrays,
as TFDS gives, or encoded bytes, which the `decode` op decodes) read through
`rew_jax.data.pipeline.eval_input`, in Grain threads ahead of the prediction. Batches hold
`image` float32 [B, H, W, 3], `prompt` int32 [B, P] (the fixed question) and `mask`; the
options are `Options` (`Evaluator.default_config()`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Iterator, Mapping, Sequence

import jax
import numpy as np

from rew_jax import storage
from rew_jax.data import code_table
from rew_jax.data import ops as ops_lib
from rew_jax.errors import ConfigError, UserError
from rew_jax.evaluators import common
from rew_jax.evaluators import finegrained
from rew_jax.models import trie as trie_lib
from rew_jax.registry import EVALUATORS

DEFAULT_PP = ("resize_crop(224)|normalize('clip')|"
              "tokenize(key='prompt', bos=True, max_len=20)|pad(20, key='prompt')")
MODES = ("trie", "likelihood")
ENTITY_TARGETS = ("name", "ald")


_DECODE = ops_lib.get_decode()  # Encoded bytes → RGB pixels, the pp op (simplejpeg or PIL).


class SetExamples:
  """The first `n` examples of a set as the pp's inputs, {"image": RGB pixels (a grey image
  repeated to 3 channels), "prompt": the fixed question}; picklable (Grain workers)."""

  def __init__(self, data: finegrained.LabelledSet, n: int, prompt: str):
    self.data, self.n, self.prompt = data, n, prompt

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, index: int) -> dict[str, Any]:
    where = f"{self.data.name} example {index}"
    image = self.data[index]["image"]
    if isinstance(image, (bytes, bytearray)):
      image = _DECODE({"image": bytes(image), "_where": where}, None)["image"]
    image = np.asarray(image)
    if image.ndim == 2:
      image = np.repeat(image[..., None], 3, axis=-1)
    return {"image": image, "prompt": self.prompt, "_where": where}


def class_token_table(sequences: Sequence[Sequence[int]], eos_id: int) -> np.ndarray:
  """int32 [C, L]: tokens, EOS, then 0-padding, L = longest sequence + 1."""
  width = max(len(t) for t in sequences) + 1
  table = np.zeros((len(sequences), width), np.int32)
  for i, toks in enumerate(sequences):
    table[i, :len(toks)] = toks
    table[i, len(toks)] = eos_id
  return table


def entity_sequences(entity_target: str, entity_ids: Sequence[str], names: Sequence[str], *,
                     tokenizer, kb=None, codes_path: str = "") -> list[list[int]]:
  """What the model emits for each entity: its tokenized name, or its ALD code (the KB's
  code table, in KB row order). The one place that knows the recipe's entity target."""
  if entity_target == "name":
    return [list(t) for t in tokenizer.encode_batch(list(names))]
  if entity_target == "ald":
    if kb is None and not codes_path:
      raise ConfigError("entity_target='ald' needs kb_dir (the KB whose codes the model learnt)")
    path = codes_path or kb.path(code_table.FILE_NAME)
    table = code_table.load_codes(path)
    rows = table.rows_of(list(entity_ids))
    missing = [e for e, r in zip(entity_ids, rows) if r < 0]
    if missing:
      raise ConfigError(f"{path}: no ALD code for the mapped entities {missing[:5]} "
                        f"({len(missing)} in all): the class map and the KB disagree")
    return [table.tokens(int(r)) for r in rows]
  raise ConfigError(f"entity_target {entity_target!r}: expected one of {ENTITY_TARGETS}")


class _SetRun:
  """One set's examples, class map and restricted answer space."""

  def __init__(self, data: finegrained.LabelledSet, class_map, max_examples: int, prompt: str):
    self.data, self.class_map = data, class_map
    n = len(data)
    self.indices = list(range(min(n, max_examples) if max_examples else n))
    if not self.indices:
      raise UserError(f"zeroshot {data.name}: the data source is empty")
    self.examples = SetExamples(data, len(self.indices), prompt)
    # The answer space: each mapped entity once, in the order of its first class.
    self.entity_ids = list(dict.fromkeys(c.entity_id for c in class_map if c.entity_id))
    if not self.entity_ids:  # Reported as 0 % with every class unmapped, not skipped.
      logging.warning("zeroshot %s: none of its %d classes is mapped to a KB entity (see its "
                      "class map)", data.name, len(class_map))
    names = {c.entity_id: c.entity_name or c.class_name for c in class_map if c.entity_id}
    self.entity_names = [names[e] for e in self.entity_ids]
    self.unmapped = [c.class_name for c in class_map if not c.entity_id]
    counts = {}
    for c in class_map:
      if c.entity_id:
        counts[c.entity_id] = counts.get(c.entity_id, 0) + 1
    self.shared = sorted(c.class_name for c in class_map if counts.get(c.entity_id, 0) > 1)


@dataclasses.dataclass
class Options(common.InputOptions):
  """The zero-shot evaluator's options (a config block's keys besides type, pred, every)."""
  datasets: Sequence[str] | str = ()      # Names of finegrained.SETS (or "a,b").
  split: str = ""                         # "": each set's evaluation split.
  data_dir: str | None = None             # TFDS data directory.
  roots: Mapping[str, str] | None = None  # {set: folder} of the on-disk sets.
  sets: Mapping[str, finegrained.LabelledSet] | None = None  # Or injected sets.
  class_maps: Mapping[str, Sequence[finegrained.ClassEntity]] | None = None  # Or injected.
  class_map_dir: str = ""                 # "": <workdir>/eval/<name>/class_maps.
  kb_dir: str = ""                        # The KB index the classes are mapped onto.
  entity_target: str = "name"             # What the model emits: "name" | "ald".
  codes_path: str = ""                    # ALD codes ("": the KB index's ald_codes.npz).
  mode: str = "trie"                      # "trie" | "likelihood".
  prompt: str = "what is this?"
  tokenizer: Any = None                   # Or a tokenizer of tokenizer_kind/path.
  tokenizer_kind: str = "bert"
  tokenizer_path: str | None = None
  pp: str = DEFAULT_PP
  predict_kwargs: Mapping[str, Any] | None = None  # Keyword arguments of predict_fn.


@EVALUATORS.register("zeroshot")
class Evaluator(common.Evaluator):
  """Top-1 of choosing each image's class entity; see the module docstring.

  Data: `datasets` (names of `finegrained.SETS`, read with `split`, `data_dir` for TFDS,
  `roots` {set: folder} for on-disk sets) or injected `sets` {name: LabelledSet}. Class
  maps: built or read under `class_map_dir` with the KB of `kb_dir`, or injected
  `class_maps` {name: [ClassEntity]}.
  """

  name = "zeroshot"
  Options = Options
  SHARED_KWARGS = ("tokenizer",)

  def __init__(self, predict_fn, **options):
    super().__init__(predict_fn, **options)
    o = self.options
    if o.mode not in MODES:
      raise ConfigError(f"zeroshot mode {o.mode!r}: expected one of {', '.join(MODES)}")
    if o.entity_target not in ENTITY_TARGETS:
      raise ConfigError(f"zeroshot entity_target {o.entity_target!r}: expected one of "
                        f"{', '.join(ENTITY_TARGETS)}")
    self.mode, name, workdir = o.mode, self.name, self.workdir
    datasets, sets, kb_dir, class_maps = o.datasets, o.sets, o.kb_dir, o.class_maps
    if isinstance(datasets, str):
      datasets = [d for d in datasets.split(",") if d]
    if sets is None:
      if not datasets:
        raise ConfigError("zeroshot needs `datasets` (some of "
                          f"{', '.join(finegrained.SETS)}) or injected `sets`")
      roots = dict(o.roots or {})
      sets = {d: finegrained.open_set(d, split=o.split, data_dir=o.data_dir,
                                      root=roots.get(d, "")) for d in datasets}
    kb = None
    if kb_dir:
      from rew_jax.kb.wiki6m import EntityKB  # pylint: disable=g-import-not-at-top
      kb = EntityKB(kb_dir)
    if class_maps is None:
      if kb is None:
        raise ConfigError("zeroshot needs kb_dir (to map classes to entities) or injected "
                          "class_maps")
      map_dir = o.class_map_dir or (os.path.join(workdir, "eval", name, "class_maps")
                                    if workdir else "")
      resolver_fn = lambda: make_resolver(kb)
      class_maps = {}
      for set_name, data in sets.items():
        path = os.path.join(map_dir, f"{set_name}.jsonl") if map_dir else ""
        class_maps[set_name] = (
            finegrained.load_class_map(path, data.class_names, kb, resolver_fn,
                                       write=jax.process_index() == 0)
            if path else finegrained.resolve_classes(data.class_names, resolver_fn(), kb))
    self.runs = {s: _SetRun(data, class_maps[s], o.max_examples, o.prompt)
                 for s, data in sets.items()}
    tokenizer = o.tokenizer
    if tokenizer is None:
      from rew_jax.data.tokenizers import load_tokenizer  # pylint: disable=g-import-not-at-top
      tokenizer = load_tokenizer(o.tokenizer_kind, o.tokenizer_path)
    for run in self.runs.values():
      if not run.entity_ids:
        continue
      seqs = entity_sequences(o.entity_target, run.entity_ids, run.entity_names,
                              tokenizer=tokenizer, kb=kb, codes_path=o.codes_path)
      empty = [n for n, s in zip(run.entity_names, seqs) if not s]
      if empty:
        raise ConfigError(f"zeroshot {run.data.name}: entities that tokenize to nothing: "
                          f"{empty[:5]}")
      # Entities with one sequence cannot be told apart: the trie keeps the first, the
      # likelihood mode scores them equal (argmax: the first as well).
      run.class_tokens = class_token_table(seqs, tokenizer.eos_id)
      run.trie = trie_lib.build_trie(seqs, tokenizer.eos_id) if o.mode == "trie" else None
    self.predict_kwargs = dict(o.predict_kwargs or {})

  def predict(self, params, run: _SetRun) -> list[int]:
    """Entity index (into run.entity_ids) per example, -1 for none."""
    if not run.entity_ids:
      return [-1] * len(run.indices)
    kwargs = dict(self.predict_kwargs)
    if self.mode == "trie":
      kwargs["trie"] = run.trie
    else:
      kwargs["class_tokens"] = run.class_tokens
    # Several processes: each predicts its share, all get every prediction.
    out = common.predict_source(self.predict_fn, params, run.examples, self.options, **kwargs)
    if self.mode == "trie":
      rows = out["rows"]
      return (rows[:, 0] if rows.ndim == 2 else rows).astype(int).tolist()
    return np.argmax(out["scores"], axis=-1).astype(int).tolist()

  def run(self, params, *, step: int | None = None) -> Iterator[tuple[str, float]]:
    top1s = []
    for set_name, run in self.runs.items():
      preds = self.predict(params, run)
      labels = [int(run.data[i]["label"]) for i in run.indices]
      truth = [run.class_map[y].entity_id for y in labels]
      pred_ids = [run.entity_ids[p] if 0 <= p < len(run.entity_ids) else "" for p in preds]
      correct = [int(bool(t) and p == t) for p, t in zip(pred_ids, truth)]
      top1 = 100.0 * sum(correct) / len(correct)
      top1s.append(top1)
      unmapped_examples = sum(not t for t in truth)
      directory = self.output_dir(step)
      if directory:
        directory = os.path.join(directory, set_name)
        storage.makedirs(directory)
        names = dict(zip(run.entity_ids, run.entity_names))
        rows = [{"index": i, "label": y, "class_name": run.class_map[y].class_name,
                 "entity_id": t, "pred_entity_id": p, "pred_name": names.get(p, ""),
                 "correct": c}
                for i, y, t, p, c in zip(run.indices, labels, truth, pred_ids, correct)]
        common.write_table(os.path.join(directory, "table.tsv"), rows)
        common.write_metrics(os.path.join(directory, "metrics.json"), {
            "top1": top1, "num_examples": len(correct), "mode": self.mode,
            "num_classes": len(run.class_map), "num_entities": len(run.entity_ids),
            "unmapped_classes": run.unmapped, "unmapped_examples": unmapped_examples,
            "shared_entity_classes": run.shared})
      yield f"{self.name}/{set_name}/top1", top1
      yield f"{self.name}/{set_name}/unmapped_classes", float(len(run.unmapped))
      yield f"{self.name}/{set_name}/unmapped_examples", float(unmapped_examples)
    yield f"{self.name}/mean_top1", float(np.mean(top1s))


def make_resolver(kb):
  """The KB name resolver with BM25 fuzzy matching (as OVEN's text mapping uses)."""
  from rew_jax.kb.bm25 import TitleBM25  # pylint: disable=g-import-not-at-top
  from rew_jax.kb.resolver import NameResolver  # pylint: disable=g-import-not-at-top
  return NameResolver(kb, bm25=TitleBM25.open_or_build(kb))
