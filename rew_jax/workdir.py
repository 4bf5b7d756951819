"""The workdir layout: the one module that knows where each stage's outputs live.

    W/world/                       the embedded world (`world` stage)
        kb/Wiki6M_ver_1_0.jsonl.gz   its knowledge base, in the Wiki6M format
        images/ oven/ truth/         web and OVEN images, OVEN files, the world's answer key
        world.json                   its summary
    W/kb/                          the KB index, entity embeddings, codes, name trie
    W/candidates/                  candidate shards + manifest.json (`candidates` stage)
    W/records[_NAME]/              curated record shards + manifest.json (`curate` stage)
    W/curation[_NAME]/             curation state, journals, report (beside the records)
    W/oven_train_records/          the world's OVEN train splits as records (fine-tuning)
    W/vocab/vocab_ids.npy          the demo models' trimmed vocabulary (`rew_jax.data.vocab`)
    W/train[_NAME]/                a training run: checkpoints/, metrics.jsonl, eval/
    W/finetune_NAME/               a fine-tuning run of train_NAME on OVEN train
    W/report.md, report.json, curves.png     the demo's report
    W/jax_cache/                   the demo's persistent JAX compilation cache

`NAME` tells several curations or runs of one pipeline apart (the demo's `entity_webli` and
`rew`). A stage given `--workdir W` alone (`train`, `eval`) uses W itself as its run
directory, so the documented `train --workdir gs://B/run` keeps its checkpoints in
gs://B/run/checkpoints.

Each stage also records what made its outputs (`stamp`): a hash of its config section and of
its inputs' stamps. A rerun compares it and redoes the stage, reuses the outputs or refuses,
as the stage decides; it never reports old results as new.

Paths are joined as strings (never `os.path.abspath`), so a `gs://` workdir stays one;
stamps are read and written through `etils.epath`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Mapping

from etils import epath

from rew_jax import storage

STAMP_NAME = ".stage.json"
WIKI6M_NAME = "Wiki6M_ver_1_0.jsonl.gz"


def _join(*parts: str) -> str:
  return os.path.join(*parts)


def _named(base: str, name: str | None) -> str:
  return f"{base}_{name}" if name else base


@dataclasses.dataclass(frozen=True)
class Workdir:
  """Paths of one pipeline workdir; every stage asks this object where things are."""
  root: str

  # ---------------------------------------------------------------------- world
  @property
  def world(self) -> str:
    return _join(self.root, "world")

  @property
  def world_kb(self) -> str:
    """The world's knowledge base file (Wiki6M jsonl)."""
    return world_kb_file(self.world)

  @property
  def world_images(self) -> str:
    return _join(self.world, "images")

  def world_oven(self, split: str) -> str:
    """OVEN file of the world, e.g. split='entity_val' → world/oven/oven_entity_val.jsonl."""
    return _join(self.world, "oven", f"oven_{split}.jsonl")

  @property
  def world_truth(self) -> str:
    """The world's answer key of the web images. Only reports that score against the
    truth read it."""
    return _join(self.world, "truth", "web_truth.jsonl")

  # ---------------------------------------------------------------------- KB and candidates
  @property
  def kb_index(self) -> str:
    return _join(self.root, "kb")

  def kb_file(self, name: str) -> str:
    """An artifact of the KB index (e.g. name_trie.npz, codes.npz)."""
    return _join(self.kb_index, name)

  @property
  def candidates(self) -> str:
    return _join(self.root, "candidates")

  # ---------------------------------------------------------------------- curation
  def records(self, name: str | None = None) -> str:
    return _join(self.root, _named("records", name))

  def curation(self, name: str | None = None) -> str:
    return _join(self.root, _named("curation", name))

  # ---------------------------------------------------------------------- training
  @property
  def oven_records(self) -> str:
    return _join(self.root, "oven_train_records")

  @property
  def vocab(self) -> str:
    return _join(self.root, "vocab")

  def finetune_run(self, name: str) -> str:
    return _join(self.root, f"finetune_{name}")

  def train_run(self, name: str | None = None) -> str:
    """A training run's directory: W/train_NAME, or W itself without a name (the `train`
    and `eval` stages' own workdir)."""
    return _join(self.root, _named("train", name)) if name else self.root

  # ---------------------------------------------------------------------- reports
  @property
  def report_md(self) -> str:
    return _join(self.root, "report.md")

  @property
  def report_json(self) -> str:
    return _join(self.root, "report.json")

  @property
  def curves(self) -> str:
    return _join(self.root, "curves.png")


def world_kb_file(world_dir: str) -> str:
  return _join(world_dir, "kb", WIKI6M_NAME)


def curation_dir_for(records_dir: str) -> str:
  """Where curation state lives for records written to a custom directory: beside it
  (`gs://B/recs/` → `gs://B/recs_curation`; normpath would fold a URL's `//`)."""
  if storage.is_remote(records_dir):
    return records_dir.rstrip("/") + "_curation"
  return os.path.normpath(records_dir) + "_curation"


# -------------------------------------------------------------------------- stage stamps


def fingerprint(config: Any, *inputs: str) -> str:
  """Hash of a config (section) and of the stamps of the stage's inputs."""
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  text = json.dumps([config, list(inputs)], sort_keys=True, default=repr)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_stamp(directory: str) -> dict | None:
  """The stamp a finished stage left in `directory`, or None."""
  path = epath.Path(directory) / STAMP_NAME
  if not path.exists():
    return None
  return json.loads(path.read_text())


def write_stamp(directory: str, stage: str, digest: str, **extra: Any) -> None:
  """Marks `directory` as the output of `stage` with fingerprint `digest` (written whole:
  `rew_jax.storage.write_text`, a rename locally, one object upload on a bucket)."""
  storage.makedirs(directory)
  storage.write_text(os.path.join(directory, STAMP_NAME),
                     json.dumps(dict(stage=stage, fingerprint=digest, **extra), indent=1))


def stamp_of(directory: str) -> str:
  """The fingerprint stamped in `directory` ('' when it has none): an input of the next
  stage's fingerprint."""
  stamp = read_stamp(directory)
  return stamp["fingerprint"] if stamp else ""


def is_current(directory: str, digest: str) -> bool:
  return stamp_of(directory) == digest


def describe(stamps: Mapping[str, str]) -> str:
  return ", ".join(f"{k}={v or '-'}" for k, v in stamps.items())
