"""Visual-matching kNN: how good are an image memory's labels, seen through any image encoder.

The paper's comparison (Table 3; CLIP-L/14 and DINOv2-L/14 features, the registered
`clip_image` and `dinov2` models): embed a memory of web images, label each with either its
*candidate* entity (the caption's text-retrieval top-1: Entity-WebLI's label) or its
*curated* entity (after LLM verification/correction: REW's label), classify queries by a
k-nearest-neighbour vote in that memory, and report top-1 for each labelling (`labellings`)
and, with both, the gain. Same images, same encoder: only the labels differ.

Queries: OVEN reference files and their images, or a fine-grained set of the zero-shot
table (`query_set`, rew_jax/evaluators/finegrained.py) whose classes are mapped to KB
entities by a class map (an unmapped class's queries count as wrong). The neighbour search
is the KB retrieval's exact top-k (`rew_jax.kb.retrieval.TopKSearcher`: faiss on a CPU
host when installed, memory rows sharded over the devices otherwise).

Dimensions: Q queries, M memory images, D embedding width, K neighbours, C label classes.

`memory_records` "" reads the records of the evaluator's workdir (W/records, what `curate`
writes there); `kb_dir` "" its KB index (W/kb).

Vote: cosine similarity (embeddings are L2-normalised here), the K most similar memory
images vote for their label, one vote each (`weighting="uniform"`) or their similarity
(`"similarity"`); ties go to the class of the nearest neighbour among the tied classes.
Memory images without a label in a labelling (an abstained curation) are left out of it.

`predict_fn(params, batch) -> {"embedding": [B, D]}` (or the array itself): any image
encoder, e.g. our ViT's pooled output or converted CLIP weights, on batches of
`image` float32 [B, H, W, 3] made by the `pp` spec from {"image": encoded bytes}: the memory
and the queries are random-access sources (`Images`) read through
`rew_jax.data.pipeline.eval_input`, decoded in Grain threads ahead of the encoder. The
options are `Options` (`Evaluator.default_config()`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rew_jax import records as records_lib
from rew_jax import storage
from rew_jax import workdir as workdir_lib
from rew_jax.data import oven_files
from rew_jax.errors import ConfigError, UserError
from rew_jax.evaluators import common
from rew_jax.evaluators import finegrained
from rew_jax.kb import retrieval
from rew_jax.registry import EVALUATORS

DEFAULT_PP = "decode|resize_crop(224)|normalize('clip')"
LABELLINGS = ("candidate", "curated")


# --------------------------------------------------------------------------------------------
# The pure core.
# --------------------------------------------------------------------------------------------


def normalize(x: jax.Array) -> jax.Array:
  x = jnp.asarray(x, jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=("num_classes", "weighting"))
def vote(sims: jax.Array, labels: jax.Array, *, num_classes: int,
         weighting: str = "uniform") -> jax.Array:
  """int32 [Q]: the winning class of each query's neighbours (labels int [Q, K], -1 = none)."""
  ok = (labels >= 0) & jnp.isfinite(sims)
  weight = jnp.where(ok, 1.0 if weighting == "uniform" else sims, 0.0)
  onehot = jax.nn.one_hot(jnp.where(ok, labels, num_classes), num_classes + 1)[..., :num_classes]
  votes = jnp.einsum("qk,qkc->qc", weight, onehot)
  k = labels.shape[1]
  rank = jnp.where(onehot > 0, jnp.arange(k)[None, :, None], k).min(axis=1)  # [Q, C]
  tied = (votes == votes.max(axis=1, keepdims=True)) & (rank < k)
  pred = jnp.argmin(jnp.where(tied, rank, k + 1), axis=1)
  return jnp.where(ok.any(axis=1), pred, -1).astype(jnp.int32)


def knn_classify(queries: np.ndarray, memory: np.ndarray, labels: np.ndarray, *, k: int,
                 num_classes: int, weighting: str = "uniform", chunk: int = 8192,
                 mesh: jax.sharding.Mesh | None = None) -> np.ndarray:
  """int [Q]: kNN class of each query embedding; memory rows with label -1 are ignored.

  Neighbours: exact top-k cosine similarity by the KB retrieval's searcher, `chunk` memory
  rows at a time, rows split over all devices of `mesh` (default: a mesh of every device;
  inside a model's mesh context, pass that mesh); on equal similarity the lower memory row
  ranks first."""
  if weighting not in ("uniform", "similarity"):
    raise ConfigError(f"weighting {weighting!r}: expected 'uniform' or 'similarity'")
  labels = np.asarray(labels)
  keep = labels >= 0
  if not keep.any():
    return np.full(len(queries), -1, np.int32)
  mem, lab = np.asarray(memory)[keep], labels[keep]
  k = min(k, len(mem))
  chunk = min(chunk, len(mem))
  searcher = retrieval.TopKSearcher(np.asarray(normalize(mem)), chunk_rows=chunk, mesh=mesh)
  sims, idx = searcher.search(np.asarray(normalize(queries)), k)
  return np.asarray(vote(jnp.asarray(sims), jnp.asarray(lab)[idx], num_classes=num_classes,
                         weighting=weighting))


# --------------------------------------------------------------------------------------------
# The evaluator.
# --------------------------------------------------------------------------------------------


def memory_from_records(directory: str, *, max_records: int = 0) -> list[dict[str, Any]]:
  """Memory items from REW records: candidate = top retrieval candidate, curated = the
  record's entity when its curation kept or corrected it (else no curated label)."""
  items = []
  for rec in records_lib.read_records(directory):
    curated = rec.entity_id if rec.curation_status in ("kept", "corrected") else None
    items.append({"image_id": rec.image_id, "image": rec.image,
                  "candidate": rec.candidates[0].entity_id if rec.candidates else None,
                  "curated": curated or None})
    if max_records and len(items) >= max_records:
      break
  return items


def queries_from_oven(references: str | Sequence[str], image_dir: str, *,
                      max_examples: int = 0) -> list[dict[str, Any]]:
  """Query items from OVEN reference files: the image and its true entity."""
  refs = oven_files.read_references(references, required=("data_id", "image_id", "entity_id"))
  if max_examples:
    refs = refs[:max_examples]
  return [{"query_id": r["data_id"], "image_id": r["image_id"], "entity_id": r["entity_id"],
           "image_path": oven_files.image_path(image_dir, r["image_id"]),
           "data_split": r.get("data_split", "")} for r in refs]


def queries_from_set(data: finegrained.LabelledSet,
                     class_map: Sequence[finegrained.ClassEntity], *,
                     max_examples: int = 0) -> list[dict[str, Any]]:
  """Query items from a fine-grained set: the image and its class's entity (None: unmapped)."""
  n = min(len(data), max_examples) if max_examples else len(data)
  out = []
  for i in range(n):
    ex = data[i]
    entity = class_map[int(ex["label"])].entity_id or None
    out.append({"query_id": f"{data.name}/{i}", "image": ex["image"], "entity_id": entity})
  return out


class Images:
  """Memory or query items as a random-access source: [i] → {"image": the encoded bytes
  (read from the item's `image_path` when it holds none)}; picklable (Grain workers)."""

  def __init__(self, items: Sequence[Mapping[str, Any]]):
    self.items = items

  def __len__(self) -> int:
    return len(self.items)

  def __getitem__(self, index: int) -> dict[str, Any]:
    item = self.items[index]
    image = item.get("image")
    if image is None:
      image = storage.read_bytes(item["image_path"])
    where = item.get("query_id") or item.get("image_id", "?")
    return {"image": image, "_where": f"kNN item {where}"}


@dataclasses.dataclass
class Options(common.InputOptions):
  """The kNN evaluator's options (a config block's keys besides type, pred and every)."""
  memory: Sequence[Mapping[str, Any]] | None = None  # Injected memory items.
  memory_records: str = ""               # Or a records dir ("": the workdir's records).
  labellings: Sequence[str] = LABELLINGS  # Some of "candidate", "curated".
  queries: Sequence[Mapping[str, Any]] | None = None  # Injected query items.
  query_references: str | Sequence[str] = ()  # Or OVEN reference files ...
  image_dir: str = ""                    # ... and their images,
  query_set: str = ""                    # or a fine-grained set (finegrained.SETS),
  query_split: str = ""                  # its split ("": the evaluation split),
  data_dir: str | None = None            # its TFDS data directory,
  query_root: str = ""                   # or its folder (on-disk sets).
  kb_dir: str = ""                       # The KB of the class maps ("": the workdir's).
  class_map_dir: str = ""                # "": <workdir>/eval/<name>/class_maps.
  k: int = 10                            # Neighbours.
  weighting: str = "uniform"             # "uniform" | "similarity".
  chunk: int = 8192                      # Memory rows per search step.
  pp: str = DEFAULT_PP
  batch_size: int = 64


@EVALUATORS.register("knn_matching")
class Evaluator(common.Evaluator):
  """Top-1 of kNN under each labelling of the memory, and the gain (percent points) of
  curated over candidate labels when both are evaluated."""

  name = "knn"
  Options = Options

  def __init__(self, predict_fn, **options):
    super().__init__(predict_fn, **options)
    o = self.options
    labellings = tuple(o.labellings)
    if not labellings or set(labellings) - set(LABELLINGS):
      raise ConfigError(f"knn_matching labellings {labellings}: some of {LABELLINGS}")
    self.labellings = labellings
    memory, queries, memory_records = o.memory, o.queries, o.memory_records
    if memory is None:
      if not memory_records:
        if not self.workdir:
          raise ConfigError("knn_matching needs memory items or memory_records (a records dir)")
        memory_records = workdir_lib.Workdir(self.workdir).records()
      memory = memory_from_records(memory_records)
    if queries is None:
      if o.query_set:
        queries = self._set_queries(o.query_set, o.query_split, o.data_dir, o.query_root,
                                    o.kb_dir, o.class_map_dir, o.max_examples)
      elif o.query_references and o.image_dir:
        queries = queries_from_oven(o.query_references, o.image_dir,
                                    max_examples=o.max_examples)
      else:
        raise ConfigError("knn_matching needs query items, query_set (a fine-grained set), or "
                          "query_references and image_dir (OVEN)")
    if not memory or not queries:
      raise UserError(f"knn_matching: {len(memory)} memory images and {len(queries)} queries; "
                      "both must be non-empty")
    if o.weighting not in ("uniform", "similarity"):
      raise ConfigError(f"weighting {o.weighting!r}: expected 'uniform' or 'similarity'")
    self.memory, self.queries = list(memory), list(queries)
    self.k, self.weighting, self.chunk = o.k, o.weighting, o.chunk

  def _set_queries(self, query_set, split, data_dir, root, kb_dir, class_map_dir,
                   max_examples):
    """A fine-grained set's images, labelled by the zero-shot evaluator's class maps."""
    if not kb_dir:
      if not self.workdir:
        raise ConfigError("knn_matching query_set needs kb_dir (to map classes to entities)")
      kb_dir = workdir_lib.Workdir(self.workdir).kb_index
    from rew_jax.evaluators import zeroshot  # pylint: disable=g-import-not-at-top
    from rew_jax.kb.wiki6m import EntityKB  # pylint: disable=g-import-not-at-top
    kb = EntityKB(kb_dir)
    data = finegrained.open_set(query_set, split=split, data_dir=data_dir, root=root)
    map_dir = class_map_dir or (os.path.join(self.workdir, "eval", self.name, "class_maps")
                                if self.workdir else "")
    resolver_fn = lambda: zeroshot.make_resolver(kb)
    if map_dir:
      class_map = finegrained.load_class_map(os.path.join(map_dir, f"{query_set}.jsonl"),
                                             data.class_names, kb, resolver_fn,
                                             write=jax.process_index() == 0)
    else:
      class_map = finegrained.resolve_classes(data.class_names, resolver_fn(), kb)
    return queries_from_set(data, class_map, max_examples=max_examples)

  def embed(self, params, items: Sequence[Mapping[str, Any]]) -> np.ndarray:
    def predict(p, batch):
      emb = self.predict_fn(p, batch)
      return {"embedding": emb["embedding"] if isinstance(emb, Mapping) else emb}

    # Several processes: each embeds its share, all get every embedding.
    out = common.predict_source(predict, params, Images(items), self.options)
    return np.asarray(out["embedding"], np.float32)

  def classify(self, query_emb: np.ndarray, memory_emb: np.ndarray,
               mesh: jax.sharding.Mesh | None = None) -> dict[str, list]:
    """labelling → predicted entity id (or None) per query."""
    out = {}
    for labelling in self.labellings:
      names = sorted({m[labelling] for m in self.memory if m.get(labelling)})
      index = {n: i for i, n in enumerate(names)}
      labels = np.array([index.get(m.get(labelling), -1) for m in self.memory], np.int32)
      pred = knn_classify(query_emb, memory_emb, labels, k=self.k, num_classes=max(1, len(names)),
                          weighting=self.weighting, chunk=self.chunk, mesh=mesh)
      out[labelling] = [names[p] if p >= 0 else None for p in pred.tolist()]
    return out

  def run(self, params, *, step: int | None = None) -> Iterator[tuple[str, float]]:
    memory_emb = self.embed(params, self.memory)
    query_emb = self.embed(params, self.queries)
    # The search runs on the parameters' mesh when they have one (the model's mesh context).
    preds = self.classify(query_emb, memory_emb, common.params_mesh(params))
    truth = [q["entity_id"] for q in self.queries]
    metrics = {}
    for labelling in self.labellings:
      correct = sum(t is not None and p == t for p, t in zip(preds[labelling], truth))
      metrics[f"{labelling}_top1"] = 100.0 * correct / len(truth)
      metrics[f"{labelling}_labelled"] = sum(bool(m.get(labelling)) for m in self.memory)
    if len(self.labellings) == 2:
      metrics["gain"] = metrics["curated_top1"] - metrics["candidate_top1"]
    metrics["unlabelled_queries"] = sum(t is None for t in truth)
    directory = self.output_dir(step)
    if directory:
      rows = [dict({"query_id": q.get("query_id", q.get("image_id")), "entity_id": t},
                   **{f"pred_{lab}": preds[lab][i] for lab in self.labellings})
              for i, (q, t) in enumerate(zip(self.queries, truth))]
      common.write_table(os.path.join(directory, "table.tsv"), rows)
      common.write_metrics(os.path.join(directory, "metrics.json"),
                           dict(metrics, k=self.k, weighting=self.weighting))
    for key, value in metrics.items():
      yield f"{self.name}/{key}", value
