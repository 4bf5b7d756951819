"""The OVEN evaluator: predict an entity for every reference, write the official prediction
files, score them with the official conventions (`oven_metric`).

    evaluator = Evaluator(predict_fn, references=[".../oven_entity_val.jsonl",
                                                  ".../oven_query_val.jsonl"],
                          image_dir=".../images", mapping=dict(mode="rows", kb_dir=...))
    dict(evaluator.run(params))  # {"oven/entity_seen": .., ..., "oven/final_score": ..}

The references are a random-access source (`Questions`) read through
`rew_jax.data.pipeline.eval_input`: Grain threads read each image, decode and preprocess it
ahead of the prediction. Batches hold `image` float32 [B, H, W, 3], `prompt` int32 [B, P]
(the question, BOS first, 0-padded) and `mask` int32 [B], as produced by the `pp` spec from
{"image": bytes, "prompt": question}; the options are `Options`
(`Evaluator.default_config()`). `predict_fn(params, batch, **predict_kwargs)` returns the
keys that the mapping mode reads (see `mapping`). Images are found in the OVEN layout
`<image_dir>/<id.split('_')[-1][:2]>/<id>.<ext>` (or flat `<image_dir>/<id>.<ext>`), under
`image_dir` where `image_mapping` (the released ovenid2impath.csv) says, in the released
tar shards `image_tars` (read in place), or through an explicit `image_paths` {image_id:
path} map (`oven_files.open_images`). Mapping rows and tar members are checked for every
reference when the evaluator is built.

Files under `<workdir>/eval/<name>/[step_<step>/]`: `predictions_<task>.jsonl` (official
format, one per task present: for a test split, the file to submit), `table.tsv` (one row per
reference: ids, split, question, truth, prediction, correct, mapping details) and
`metrics.json` (the full `score` result).

References without `entity_id` (OVEN's test splits) are predicted and written but not scored
(`unlabeled` counts them); whatever has labels is scored. Test references may not share an
evaluator with validation ones, and an evaluator holding a test split (`holds_test`) runs
only from `python -m rew_jax eval`, never inside training: selection and early stopping see
validation only.
On several processes each predicts its share of the references; all score the gathered
predictions, and process 0 alone writes the files.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Any, Iterator, Mapping, Sequence

from rew_jax.data import oven_files
from rew_jax.data.oven_files import OvenFormatError
from rew_jax.evaluators import common
from rew_jax.evaluators import mapping as mapping_lib
from rew_jax.evaluators import oven_metric
from rew_jax.registry import EVALUATORS

DEFAULT_PP = ("decode|resize_crop(224)|normalize('clip')|"
              "tokenize(key='prompt', bos=True, max_len=20)|pad(20, key='prompt')")


class Questions:
  """OVEN references as a random-access source: [i] → {"image": the image's bytes, "prompt":
  the question, "image_id"}, read when Grain's threads ask for it; picklable (workers).

  `images` is an `oven_files.open_images` source (folder, mapping csv, tar shards); without
  it, `image_paths` or else the per-id layout under `image_dir`."""

  def __init__(self, references: Sequence[Mapping[str, Any]], image_dir: str = "",
               image_paths: Mapping[str, str] | None = None, *, images: Any = None):
    self.references = references
    if images is None:
      images = (oven_files.PathImages(dict(image_paths)) if image_paths is not None
                else oven_files.FolderImages(image_dir))
    self.images = images

  def __len__(self) -> int:
    return len(self.references)

  def path(self, image_id: str) -> str:
    """Where the image is: a file, or `<tar>#<member>` for a tar shard's member."""
    return self.images.locate(image_id)

  def __getitem__(self, index: int) -> dict[str, Any]:
    ref = self.references[index]
    return {"image": self.images.read(ref["image_id"]), "prompt": ref["question"],
            "image_id": ref["image_id"],
            "_where": f"OVEN {ref['data_id']} (image {ref['image_id']})"}


@dataclasses.dataclass
class Options(common.InputOptions):
  """The OVEN evaluator's options (a config block's keys besides type, pred and every)."""
  references: str | Sequence[str] = ()    # OVEN reference files (JSONL).
  image_dir: str = ""                     # Images in the OVEN layout (or flat).
  image_mapping: str = ""                 # ovenid2impath.csv: id → path in image_dir/tars.
  image_tars: str | Sequence[str] = ()    # Or the released tar shards (paths/globs/folder).
  image_paths: Mapping[str, str] | None = None  # Or an explicit {image_id: path} map.
  mapping: Mapping[str, Any] | None = None  # dict(mode=rows|codes|text, ...); None: rows.
  mapper: Any = None                      # Or a mapper object (mapping.py).
  kb: Any = None                          # The KB object the mapping may use.
  tokenizer: Any = None                   # The tokenizer the text mapping may use.
  pp: str = DEFAULT_PP
  predict_kwargs: Mapping[str, Any] | None = None  # Keyword arguments of predict_fn.


@EVALUATORS.register("oven")
class Evaluator(common.Evaluator):
  """OVEN top-1 accuracy (seen/unseen), split HMs and the final HM; see the module docstring."""

  name = "oven"
  Options = Options
  SHARED_KWARGS = ("mapper", "tokenizer", "kb")

  def __init__(self, predict_fn, **options):
    super().__init__(predict_fn, **options)
    o = self.options
    self.references = oven_files.read_references(o.references, required=oven_files.QUERY_KEYS)
    if o.max_examples:
      self.references = self.references[:o.max_examples]
    if not self.references:
      raise OvenFormatError(f"no references in {o.references}")
    kinds = sorted({oven_files.split_kind(r) for r in self.references})
    if "test" in kinds and len(kinds) > 1:
      raise OvenFormatError(f"references {o.references} mix the splits {kinds}: evaluate the "
                            "test split in an evaluator of its own, so that selection never "
                            "sees it")
    # A test split (or any unlabeled reference) is for reporting only: the train loop refuses
    # to run this evaluator (evaluators/common.py), so it never drives early stopping.
    self.holds_test = "test" in kinds or not all(map(oven_files.is_labeled, self.references))
    if not o.image_dir and not o.image_tars and o.image_paths is None:
      raise OvenFormatError("the OVEN evaluator needs image_dir, image_tars or image_paths")
    images = oven_files.open_images(o.image_dir, mapping=o.image_mapping, tars=o.image_tars,
                                    image_paths=o.image_paths,
                                    ids={r["image_id"] for r in self.references})
    self.questions = Questions(self.references, images=images)
    self.mapper = o.mapper
    if self.mapper is None:
      mapping = dict(o.mapping or {"mode": "rows"})
      self.mapper = mapping_lib.from_config(mapping.pop("mode", "rows"), kb=o.kb,
                                            tokenizer=o.tokenizer, **mapping)
    self.predict_kwargs = dict(o.predict_kwargs or {})

  def predict(self, params) -> list[tuple[dict, mapping_lib.Mapped]]:
    """(reference, mapped prediction) for every reference, in reference order; on several
    processes each predicts its share and every process gets all (`common.predict_all`)."""
    outputs = common.predict_source(self.predict_fn, params, self.questions, self.options,
                                    **self.predict_kwargs)
    mapped = self.mapper(outputs)
    if len(mapped) != len(self.references):
      raise ValueError(f"mapper returned {len(mapped)} entities for "
                       f"{len(self.references)} examples")
    return list(zip(self.references, mapped))

  def run(self, params, *, step: int | None = None) -> Iterator[tuple[str, float]]:
    pairs = self.predict(params)
    predictions = [{"data_id": r["data_id"], "pred_entity_id": m.entity_id} for r, m in pairs]
    result = oven_metric.score(self.references, predictions)
    directory = self.output_dir(step)
    if directory:
      self._write(directory, pairs, predictions, result)
    metrics = oven_metric.flat_metrics({k: v for k, v in result.items() if k != "strict"})
    # Every reference gets a prediction here, so the strict figures equal the official ones;
    # what can differ is how often the mapping produced no entity at all.
    metrics["no_entity_frac"] = sum(m.entity_id is None for _, m in pairs) / len(pairs)
    unlabeled = sum(c["references"] for c in result["unlabeled"].values())
    if unlabeled:  # Predicted and written (the official submission format), not scored.
      metrics["unlabeled"] = unlabeled
    for key, value in metrics.items():
      yield f"{self.name}/{key}", value

  def _write(self, directory, pairs, predictions, result) -> None:
    by_task = collections.defaultdict(list)
    for (ref, _), pred in zip(pairs, predictions):
      by_task[oven_metric.task_of(ref["data_split"])].append(pred)
    for task, preds in by_task.items():
      oven_files.write_predictions(os.path.join(directory, f"predictions_{task}.jsonl"), preds)
    rows = []
    for ref, m in pairs:
      rows.append({"data_id": ref["data_id"], "image_id": ref["image_id"],
                   "data_split": ref["data_split"], "question": ref["question"],
                   "entity_id": ref.get("entity_id"), "entity_text": ref.get("entity_text", ""),
                   "pred_entity_id": m.entity_id,
                   "correct": (int(m.entity_id == ref["entity_id"])
                               if oven_files.is_labeled(ref) else None), **m.info})
    common.write_table(os.path.join(directory, "table.tsv"), rows)
    common.write_metrics(os.path.join(directory, "metrics.json"), result)
