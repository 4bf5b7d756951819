"""OVEN's file formats: references, predictions and the image layout.

  references   `oven_{entity,query}_{val,test}.jsonl`, one object per line with `data_id`,
               `image_id`, `question`, `entity_id`, `entity_text`, `data_split`
               (e.g. "entity_val_seen", "query_val_unseen"); test references come
               without `entity_id` (unlabeled: predicted, not scored);
  predictions  one `{"data_id": ..., "pred_entity_id": ...}` per line (a Wikidata id);
  images       `<image_dir>/<id.split('_')[-1][:2]>/<id>.<ext>`, or flat `<image_dir>/<id>.<ext>`;
               or as released: `ovenid2impath.csv` (rows `image_id,relative path`, no
               header) over an extracted folder, or the image tar shards read in place.

`open_images` picks the image source from what is given (tars, a mapping csv, a folder) and
checks every image id it will be asked for up front: an id without a mapping row or without
a tar member is an `OvenFormatError` naming the id and the file, before any work is done.

Read by the OVEN evaluator and scorer (`rew_jax.evaluators`) and by the conversion of OVEN
annotations to records for fine-tuning (`rew_jax.data.oven_records`). Every malformed line
is an `OvenFormatError` naming the file and line.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import io
import json
import os
import tarfile
from typing import Any, Collection, Iterable, Mapping, Sequence

from rew_jax import storage
from rew_jax.errors import UserError

REFERENCE_KEYS = ("data_id", "image_id", "question", "entity_id", "data_split")
# What a reference to predict needs: a test split's references carry no `entity_id` (OVEN
# keeps its test labels; predictions are submitted in the official format).
QUERY_KEYS = ("data_id", "image_id", "question", "data_split")


def is_labeled(reference: Mapping[str, Any]) -> bool:
  """Whether a reference carries its answer (`entity_id`); a test split's do not."""
  return reference.get("entity_id") is not None


def split_kind(reference: Mapping[str, Any]) -> str:
  """"val", "test", "train"...: the second word of `data_split` ("entity_val_seen" → "val")."""
  parts = reference["data_split"].split("_")
  return parts[1] if len(parts) > 1 else ""


class OvenFormatError(UserError):
  """An OVEN reference or prediction file, or a pair of them, that cannot be scored."""


def _read_jsonl(path: str) -> Iterable[tuple[int, dict]]:
  if not storage.isfile(path):
    raise OvenFormatError(f"{path}: no such file")
  with storage.open_file(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise OvenFormatError(f"{path}:{lineno}: not JSON ({e.msg})") from None
      if not isinstance(row, dict):
        raise OvenFormatError(f"{path}:{lineno}: expected a JSON object, got "
                              f"{type(row).__name__}")
      yield lineno, row


def read_references(paths: str | Sequence[str], *,
                    required: Sequence[str] = ("data_id", "data_split")) -> list[dict]:
  """Reference rows of one or more files; `data_id`s must be unique over all of them.

  `required` keys must be present as strings (prediction also needs image_id and question:
  pass QUERY_KEYS; training needs entity_id too: REFERENCE_KEYS). An `entity_id`, where
  present and not null, must be a string: a reference without one is unlabeled (a test
  split), predicted but not scored.
  """
  paths = [paths] if isinstance(paths, str) else list(paths)
  rows, where = [], {}
  for path in paths:
    for lineno, row in _read_jsonl(path):
      for key in required:
        if not isinstance(row.get(key), str):
          got = "missing" if key not in row else f"{type(row[key]).__name__} {row[key]!r}"
          raise OvenFormatError(f"{path}:{lineno}: reference key {key!r} must be a string "
                                f"({got})")
      if row.get("entity_id") is not None and not isinstance(row["entity_id"], str):
        raise OvenFormatError(f"{path}:{lineno}: reference key 'entity_id' must be a string "
                              f"or absent (got {type(row['entity_id']).__name__} "
                              f"{row['entity_id']!r})")
      data_id = row["data_id"]
      if data_id in where:
        raise OvenFormatError(f"{path}:{lineno}: duplicate reference data_id {data_id!r} "
                              f"(first at {where[data_id]})")
      where[data_id] = f"{path}:{lineno}"
      rows.append(row)
  return rows


def read_predictions(paths: str | Sequence[str]) -> list[dict]:
  """Prediction rows `{"data_id", "pred_entity_id"}`; duplicates are an error."""
  paths = [paths] if isinstance(paths, str) else list(paths)
  rows, where = [], {}
  for path in paths:
    for lineno, row in _read_jsonl(path):
      if not isinstance(row.get("data_id"), str):
        raise OvenFormatError(f"{path}:{lineno}: prediction without a string 'data_id'")
      if "pred_entity_id" not in row:  # The official validation step rejects this too.
        raise OvenFormatError(f"{path}:{lineno}: pred_entity_id is missing for data_id "
                              f"{row['data_id']!r}")
      pred = row["pred_entity_id"]
      if pred is not None and not isinstance(pred, str):
        raise OvenFormatError(f"{path}:{lineno}: pred_entity_id must be a string or null, got "
                              f"{type(pred).__name__} {pred!r}")
      if row["data_id"] in where:
        raise OvenFormatError(f"{path}:{lineno}: duplicate prediction for data_id "
                              f"{row['data_id']!r} (first at {where[row['data_id']]})")
      where[row["data_id"]] = f"{path}:{lineno}"
      rows.append({"data_id": row["data_id"], "pred_entity_id": pred})
  return rows


def write_predictions(path: str, predictions: Iterable[Mapping[str, Any]]) -> str:
  """Writes the official prediction format, atomically (local or gs://)."""
  return storage.write_text(path, "".join(
      json.dumps({"data_id": p["data_id"], "pred_entity_id": p["pred_entity_id"]},
                 ensure_ascii=False) + "\n" for p in predictions))


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPEG", ".JPG", ".webp")


def image_path(image_dir: str, image_id: str) -> str:
  """The file of `image_id` in the OVEN layout (or flat); OvenFormatError if absent."""
  tried = []
  for folder in (os.path.join(image_dir, image_id.split("_")[-1][:2]), image_dir):
    for ext in IMAGE_EXTENSIONS:
      path = os.path.join(folder, image_id + ext)
      if storage.isfile(path):
        return path
      tried.append(path)
  raise OvenFormatError(f"image {image_id!r} not found under {image_dir!r} (looked for "
                        f"{tried[0]} and other extensions/flat layout)")


# ----------------------------------------------------------------------------------------
# Image sources: the per-id folder, ovenid2impath.csv over a folder, the tar shards.

_LOWER_EXTENSIONS = frozenset(e.lower() for e in IMAGE_EXTENSIONS)


def read_image_mapping(path: str, ids: Collection[str] | None = None) -> dict[str, str]:
  """{image_id: relative path} from an `ovenid2impath.csv` (rows `image_id,path`).

  The released file has no header; a first row whose id holds no digit ("image_id,path")
  is taken for one. `ids`: keep only those rows (the file maps millions of images). A row
  without two non-empty cells, or an id mapped to two paths, is an error naming the line.
  """
  if not storage.isfile(path):
    raise OvenFormatError(f"{path}: no such image mapping file")
  out: dict[str, str] = {}
  line_of: dict[str, int] = {}
  with storage.open_file(path, "rb") as raw:  # Local or a bucket's object, streamed.
    f = io.TextIOWrapper(raw, encoding="utf-8", newline="")
    for lineno, row in enumerate(csv.reader(f), 1):
      if not row or not "".join(row).strip():
        continue
      if lineno == 1 and row[0] and not any(c.isdigit() for c in row[0]):
        continue  # A header.
      if len(row) != 2 or not row[0].strip() or not row[1].strip():
        raise OvenFormatError(f"{path}:{lineno}: expected 'image_id,relative path', got "
                              f"{','.join(row)!r}")
      image_id, rel = row[0].strip(), _clean_member(row[1].strip())
      if ids is not None and image_id not in ids:
        continue
      if image_id in out and out[image_id] != rel:
        raise OvenFormatError(f"{path}:{lineno}: image {image_id!r} mapped to {rel!r}, and "
                              f"to {out[image_id]!r} on line {line_of[image_id]}")
      out[image_id], line_of[image_id] = rel, lineno
  return out


def _clean_member(name: str) -> str:
  name = name.replace("\\", "/")
  while name.startswith("./"):
    name = name[2:]
  return name


def _missing_error(missing: Sequence[str], what: str) -> OvenFormatError:
  more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
  return OvenFormatError(f"image {missing[0]!r}{more} {what}")


@dataclasses.dataclass(frozen=True)
class FolderImages:
  """Image files under `image_dir`: where `mapping` ({id: path relative to image_dir}, from
  ovenid2impath.csv) says, else in the per-id layout (`image_path`). Picklable."""
  image_dir: str
  mapping: Mapping[str, str] | None = None
  mapping_file: str = ""

  def locate(self, image_id: str) -> str:
    if self.mapping is None:
      return image_path(self.image_dir, image_id)
    if image_id not in self.mapping:
      raise OvenFormatError(f"image {image_id!r} has no row in {self.mapping_file}")
    path = os.path.join(self.image_dir, self.mapping[image_id])
    if storage.isfile(path):
      return path
    try:  # The tar shards extracted as they are hold the images under their OVEN ids.
      return image_path(self.image_dir, image_id)
    except OvenFormatError:
      raise OvenFormatError(f"image {image_id!r}: {self.mapping_file} maps it to "
                            f"{self.mapping[image_id]!r}, which is not under "
                            f"{self.image_dir!r} (nor is {image_id}.<ext> in the per-id "
                            "layout)") from None

  def read(self, image_id: str) -> bytes:
    return storage.read_bytes(self.locate(image_id))


@dataclasses.dataclass(frozen=True)
class TarMember:
  tar: str
  name: str
  offset: int  # Of the member's data in the tar file.
  size: int


@dataclasses.dataclass(frozen=True)
class TarImages:
  """Images read in place from uncompressed tar shards, by offset: {id: TarMember} built
  once by `index_tars` (a header scan, no data read). Picklable."""
  members: Mapping[str, TarMember]

  def locate(self, image_id: str) -> str:
    m = self._member(image_id)
    return f"{m.tar}#{m.name}"

  def _member(self, image_id: str) -> TarMember:
    if image_id not in self.members:
      tars = sorted({m.tar for m in self.members.values()})
      raise OvenFormatError(f"image {image_id!r} is in none of the tar shards {tars}")
    return self.members[image_id]

  def read(self, image_id: str) -> bytes:
    m = self._member(image_id)
    with open(m.tar, "rb") as f:
      f.seek(m.offset)
      data = f.read(m.size)
    if len(data) != m.size:
      raise OvenFormatError(f"{m.tar}: member {m.name!r} (image {image_id!r}) is truncated "
                            f"({len(data)} of {m.size} bytes)")
    return data


@dataclasses.dataclass(frozen=True)
class PathImages:
  """An explicit {image_id: path} map."""
  paths: Mapping[str, str]

  def locate(self, image_id: str) -> str:
    if image_id not in self.paths:
      raise OvenFormatError(f"image {image_id!r} is not in the image_paths map")
    return self.paths[image_id]

  def read(self, image_id: str) -> bytes:
    return storage.read_bytes(self.locate(image_id))


def tar_files(tars: str | Sequence[str]) -> list[str]:
  """Tar paths from paths, globs and folders (a folder: its `*.tar`, sorted)."""
  out = []
  for item in [tars] if isinstance(tars, str) else list(tars):
    if storage.is_remote(item):
      raise OvenFormatError(f"image tar shard {item!r}: shards are read in place by offset, "
                            "from a local or mounted disk")
    if os.path.isdir(item):
      found = sorted(glob.glob(os.path.join(item, "*.tar")))
    elif any(c in item for c in "*?["):
      found = sorted(glob.glob(item))
    else:
      found = [item] if os.path.isfile(item) else []
    if not found:
      raise OvenFormatError(f"no image tar shard at {item!r}")
    out += [os.path.abspath(f) for f in found]
  return out


def index_tars(tars: str | Sequence[str], ids: Collection[str],
               mapping: Mapping[str, str] | None = None) -> dict[str, TarMember]:
  """{id: TarMember} for `ids`: the member at the id's `mapping` path (or ending in it),
  else the member named `<id>.<ext>` in any folder; the first tar in order wins.

  Only headers are read (one seek per member, about 27 µs each with the file cached) and
  only the wanted ids are kept, so memory stays small whatever the shard's size.
  Compressed tars cannot be read by offset and are refused.
  """
  wanted = set(ids)
  by_path = {}
  if mapping is not None:
    by_path = {mapping[i]: i for i in wanted if i in mapping}
  found_path: dict[str, TarMember] = {}
  found_stem: dict[str, TarMember] = {}
  for tar in tar_files(tars):
    try:
      with tarfile.open(tar, "r:") as t:
        while (info := t.next()) is not None:
          t.members = []  # tarfile keeps every header it read; shards hold millions.
          if not info.isfile():
            continue
          name = _clean_member(info.name)
          member = TarMember(tar, info.name, info.offset_data, info.size)
          parts = name.split("/")
          for k in range(len(parts)):  # The mapping's path, or a path ending in it.
            image_id = by_path.get("/".join(parts[k:]))
            if image_id is not None:
              found_path.setdefault(image_id, member)
              break
          stem, ext = os.path.splitext(parts[-1])
          if stem in wanted and ext.lower() in _LOWER_EXTENSIONS:
            found_stem.setdefault(stem, member)
    except (tarfile.TarError, EOFError, OSError) as e:
      raise OvenFormatError(f"{tar}: not a readable uncompressed tar shard ({e})") from None
  return {i: found_path.get(i) or found_stem[i] for i in wanted
          if i in found_path or i in found_stem}


def open_images(image_dir: str = "", *, mapping: str = "",
                tars: str | Sequence[str] = (), image_paths: Mapping[str, str] | None = None,
                ids: Collection[str] = ()):
  """The image source for `ids`, from what is given, first match: `image_paths` (an
  explicit map), `tars` (shards read in place; `mapping` then names the member paths),
  `mapping` over `image_dir` (an extracted folder), `image_dir` alone (the per-id layout).

  Mapping rows and tar members are checked for every id now: a missing one is an
  `OvenFormatError` naming the first missing id and the file. Files in a folder are
  looked up when read.
  """
  ids = sorted(set(ids))
  if image_paths is not None:
    return PathImages(dict(image_paths))
  rows = None
  if mapping:
    rows = read_image_mapping(mapping, set(ids))
    missing = [i for i in ids if i not in rows]
    if missing:
      raise _missing_error(missing, f"has no row in {mapping}")
  if tars:
    members = index_tars(tars, ids, rows)
    missing = [i for i in ids if i not in members]
    if missing:
      names = ", ".join(os.path.basename(t) for t in tar_files(tars))
      at = f", nor one at {rows[missing[0]]!r} (its row in {mapping})" if rows else ""
      raise _missing_error(missing, f"is in none of the tar shards {names}: no member "
                           f"{missing[0]}.<ext>{at}")
    return TarImages(members)
  if not image_dir:
    raise OvenFormatError("OVEN images need an image folder, tar shards or an image_paths map")
  return FolderImages(image_dir, rows, mapping)
