"""The fine-grained sets of the paper's transfer tables, and their classes as KB entities.

Sets (`open_set(name, ...)` → `LabelledSet`: len, [i] → {"image", "label"}, class_names):
  flowers102, sun397, food101   TFDS random-access sources (`rew_jax.data.tfds_sources`),
                                prepared once under `data_dir` with `tfds build`
  aircraft, sports100           not in TFDS: read from `root`, in one of two layouts
      class folders   ROOT/<split>/<class name>/<any name>.{jpg,jpeg,png}
                      (Sports100 as distributed: train/, valid/, test/ of class folders)
      CSV             ROOT/<split>.csv, a header line then rows `image,label`: the image
                      path relative to ROOT and the class name (FGVC-Aircraft's
                      images_variant_test.txt becomes one with `image=images/<id>.jpg`,
                      `label=<variant>`)
  Class names are cleaned (`tfds_sources.clean_class_name`) and sorted for on-disk sets.

Class map: the paper's models answer with KB entities (Wikipedia titles, or their ALD
codes), so each class is mapped to one entity, in a JSON-lines file, one object per class:

    {"class_index": 0, "class_name": "pink primrose", "entity_id": "Q...",
     "entity_name": "Primula vulgaris", "method": "fuzzy", "score": 0.93,
     "source": "resolver"}

`load_class_map` builds it with the KB name resolver (rew_jax/kb/resolver.py: exact,
normalised, alias, fuzzy BM25, abstain) the first time and writes it; afterwards the file
is read as it is, so a person can correct a row (set `entity_id`, empty for no entity, and
`"source": "manual"`) and the correction stays. Classes the file lacks are resolved and
appended; a row naming a class the set does not have, or an entity the KB does not have,
is an error naming the file and line. An unresolved class keeps `entity_id` "" and counts
as unmapped: its examples are evaluated and can never be right.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

from rew_jax import storage
from rew_jax.data import tfds_sources
from rew_jax.data.tfds_sources import clean_class_name
from rew_jax.errors import ConfigError, UnknownNameError, UserError

TFDS_SETS = {"flowers102": "flowers", "sun397": "sun397", "food101": "food"}
DISK_SETS = {"aircraft": "FGVC-Aircraft", "sports100": "Sports100"}
SETS = tuple(TFDS_SETS) + tuple(DISK_SETS)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class SetFormatError(UserError):
  """An on-disk set or a class map that does not follow its documented layout."""


class LabelledSet:
  """Examples {"image": array or encoded bytes, "label": int} and the class names."""

  def __init__(self, name: str, class_names: Sequence[str], source):
    self.name, self.class_names, self._source = name, list(class_names), source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self._source[index]


class _DiskSource:
  """(image path, label) pairs read lazily: the image's bytes on access."""

  def __init__(self, items: Sequence[tuple[str, int]]):
    self.items = list(items)

  def __len__(self) -> int:
    return len(self.items)

  def __getitem__(self, index: int) -> dict[str, Any]:
    path, label = self.items[index]
    return {"image": storage.read_bytes(path), "label": label, "path": path}


def _from_folders(directory: str) -> tuple[list[str], list[tuple[str, int]]]:
  folders = sorted(d for d in os.listdir(directory) if os.path.isdir(os.path.join(directory, d)))
  if not folders:
    raise SetFormatError(f"{directory}: no class folders inside")
  names = [clean_class_name(f) for f in folders]
  items = []
  for label, folder in enumerate(folders):
    files = sorted(f for f in os.listdir(os.path.join(directory, folder))
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
      raise SetFormatError(f"{os.path.join(directory, folder)}: a class folder without images "
                           f"({', '.join(IMAGE_EXTENSIONS)})")
    items += [(os.path.join(directory, folder, f), label) for f in files]
  return names, items


def _from_csv(path: str, root: str) -> tuple[list[str], list[tuple[str, int]]]:
  with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  if not rows or not {"image", "label"} <= set(rows[0]):
    raise SetFormatError(f"{path}: expected a header with columns image,label and rows")
  names = sorted({clean_class_name(r["label"] or "") for r in rows} - {""})
  index = {n: i for i, n in enumerate(names)}
  items = []
  for line, row in enumerate(rows, start=2):
    label = clean_class_name(row["label"] or "")
    image = os.path.join(root, row["image"] or "")
    if not label or not os.path.isfile(image):
      raise SetFormatError(f"{path}:{line}: " + ("empty label" if not label else
                                                 f"image {row['image']!r} not found under {root}"))
    items.append((image, index[label]))
  return names, items


def open_disk_set(name: str, root: str, split: str = "test") -> LabelledSet:
  """An on-disk set (see the module docstring): ROOT/<split>.csv if present, else
  ROOT/<split>/ class folders."""
  if not root:
    raise ConfigError(f"{name} ({DISK_SETS.get(name, name)}) is read from disk: set its root "
                      "folder (class folders or a CSV, see rew_jax/evaluators/finegrained.py)")
  csv_path = os.path.join(root, f"{split}.csv")
  if os.path.isfile(csv_path):
    names, items = _from_csv(csv_path, root)
  elif os.path.isdir(os.path.join(root, split)):
    names, items = _from_folders(os.path.join(root, split))
  else:
    raise SetFormatError(f"{root}: neither {split}.csv nor a {split}/ folder of class folders")
  return LabelledSet(name, names, _DiskSource(items))


class _TfdsLabels:
  def __init__(self, source):
    self.source = source

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    ex = self.source[index]
    return {"image": ex["image"], "label": int(ex["label"])}


def open_set(name: str, *, split: str = "", data_dir: str | None = None,
             root: str = "") -> LabelledSet:
  """One of `SETS` (split "" = the set's evaluation split; TFDS sets read from `data_dir`,
  on-disk sets from `root`)."""
  if name in TFDS_SETS:
    short = TFDS_SETS[name]
    source = tfds_sources.open_source(short, split or None, data_dir or None)
    return LabelledSet(name, tfds_sources.class_names(short, data_dir or None),
                       _TfdsLabels(source))
  if name in DISK_SETS:
    return open_disk_set(name, root, split or "test")
  raise UnknownNameError(f"fine-grained set {name!r}; known: {', '.join(SETS)}")


# --------------------------------------------------------------------------------------------
# Class → entity map.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClassEntity:
  class_index: int
  class_name: str
  entity_id: str  # "" when unmapped.
  entity_name: str
  method: str
  score: float
  source: str  # "resolver" or "manual".


def resolve_classes(class_names: Sequence[str], resolver, kb) -> list[ClassEntity]:
  """Each class name through the resolver cascade (abstentions stay unmapped)."""
  out = []
  for i, name in enumerate(class_names):
    res = resolver.resolve(name)
    title = kb.titles[res.row] if res.entity_id else ""
    out.append(ClassEntity(i, name, res.entity_id or "", title, res.method,
                           round(float(res.score), 4), "resolver"))
  return out


def read_class_map(path: str, class_names: Sequence[str], kb=None) -> list[ClassEntity]:
  """The rows of a class-map file, checked against the set's classes (and the KB)."""
  index = {n: i for i, n in enumerate(class_names)}
  rows = []
  for line, text in enumerate(storage.read_text(path).splitlines(), start=1):
    if not text.strip():
      continue
    try:
      row = json.loads(text)
      name, entity = row["class_name"], row.get("entity_id") or ""
    except (ValueError, KeyError, TypeError) as e:
      raise SetFormatError(f"{path}:{line}: not a class-map row ({type(e).__name__}: {e})") from None
    if name not in index:
      raise SetFormatError(f"{path}:{line}: class {name!r} is not a class of this set")
    if entity and kb is not None and entity not in kb:
      raise SetFormatError(f"{path}:{line}: entity {entity!r} of class {name!r} is not in the KB")
    title = row.get("entity_name") or (kb.titles[kb.row_of(entity)] if entity and kb else "")
    rows.append(ClassEntity(index[name], name, entity, title, row.get("method", "manual"),
                            float(row.get("score", 1.0)), row.get("source", "manual")))
  return rows


def write_class_map(path: str, rows: Sequence[ClassEntity]) -> str:
  storage.makedirs(os.path.dirname(path) or ".")
  return storage.write_text(path, "".join(
      json.dumps(dataclasses.asdict(r), ensure_ascii=False) + "\n"
      for r in sorted(rows, key=lambda r: r.class_index)))


def load_class_map(path: str, class_names: Sequence[str], kb, resolver_fn,
                   write: bool = True) -> list[ClassEntity]:
  """One row per class, in class order: the file's rows (a person's corrections kept), the
  missing classes resolved with `resolver_fn()` (called only when some are missing) and the
  file (re)written when it changed and `write`."""
  rows = read_class_map(path, class_names, kb) if storage.exists(path) else []
  have = {r.class_index for r in rows}
  missing = [i for i in range(len(class_names)) if i not in have]
  if missing:
    resolver = resolver_fn()
    fresh = resolve_classes([class_names[i] for i in missing], resolver, kb)
    rows += [dataclasses.replace(r, class_index=i) for i, r in zip(missing, fresh)]
    if write:
      write_class_map(path, rows)
  by_index = {}
  for r in rows:
    by_index.setdefault(r.class_index, r)  # A repeated class: its first row counts.
  return [by_index[i] for i in range(len(class_names))]


def injected_class_map(class_names: Sequence[str],
                       entities: Sequence[Mapping[str, str] | None]) -> list[ClassEntity]:
  """A class map given in code: per class {"entity_id", "entity_name"} or None (unmapped)."""
  if len(entities) != len(class_names):
    raise ConfigError(f"{len(entities)} class entities for {len(class_names)} classes")
  return [ClassEntity(i, n, (e or {}).get("entity_id", ""), (e or {}).get("entity_name", ""),
                      "manual", 1.0, "manual") for i, (n, e) in enumerate(zip(class_names,
                                                                               entities))]
