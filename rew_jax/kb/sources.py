"""Readers for image–caption data in the formats people have, split into shard-sized units.

Formats (`data.format`):
  world       the embedded world's directory: web/captions.jsonl, image paths relative to it
  jsonl       one object per line with a caption and an image path (relative to the file's
              directory unless absolute), e.g. {"image_id", "caption", "image_path"}
  webdataset  img2dataset-style tar shards: per sample `KEY.jpg|png|webp` + `KEY.txt` and/or
              `KEY.json` (caption under "caption"); the image is referenced, not copied
  parquet     a caption column plus either an image path column or an image column holding
              bytes (a binary column, or a {"bytes", "path"} struct as HF datasets write it)
  auto        chosen from the path (a directory with web/captions.jsonl is a world)

Every record comes out as {"image_id", "caption", "image_path"}; `image_path` is an absolute
path or a reference `tar://ABS.tar#MEMBER` / `parquet://ABS.parquet#row=N` that
`read_image_bytes` opens. A unit is the work of one output shard: a line range of a jsonl
file, one tar file, or one parquet row group.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
import tarfile
from typing import Iterator

from rew_jax import storage
from rew_jax.errors import UserError

FORMATS = ("auto", "world", "jsonl", "webdataset", "parquet")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_EXT = {"jsonl": (".jsonl", ".json"), "webdataset": (".tar",), "parquet": (".parquet",)}


class DataFormatError(UserError):
  """An input record or file that cannot be read as image–caption data."""


@dataclasses.dataclass(frozen=True)
class Unit:
  format: str
  path: str
  start: int = 0   # jsonl: first line index; parquet: row group.
  stop: int = -1   # jsonl: line index past the end.
  base_dir: str = ""


@dataclasses.dataclass(frozen=True)
class Keys:
  caption: str = "caption"
  image: str = "image_path"
  image_id: str = "image_id"


def _files(path: str, fmt: str) -> list[str]:
  if os.path.isdir(path):
    files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(_EXT[fmt]))
  elif any(c in path for c in "*?["):
    files = sorted(glob.glob(path))
  else:
    files = [path] if os.path.isfile(path) else []
  if not files:
    raise DataFormatError(f"no {fmt} input found at {path!r}")
  return [os.path.abspath(f) for f in files]


def detect_format(path: str) -> str:
  if os.path.isfile(os.path.join(path, "web", "captions.jsonl")):
    return "world"
  probe = path
  if os.path.isdir(path):
    names = sorted(os.listdir(path))
    probe = next((n for n in names if n.endswith((".tar", ".parquet", ".jsonl"))), "")
  for fmt, exts in _EXT.items():
    if probe.endswith(exts):
      return fmt
  raise DataFormatError(f"cannot tell the format of {path!r}; set data.format to one of "
                        f"{', '.join(FORMATS[1:])}")


def plan_units(fmt: str, path: str, records_per_shard: int) -> list[Unit]:
  """The units (future output shards) of an input, in a deterministic order."""
  if not path:
    raise DataFormatError("data.path is empty: point it at the image–caption data")
  if fmt == "auto":
    fmt = detect_format(path)
  if fmt not in FORMATS:
    raise DataFormatError(f"unknown data format {fmt!r}; choose one of {', '.join(FORMATS)}")
  if fmt == "world":
    world = os.path.abspath(path)
    return _jsonl_units(os.path.join(world, "web", "captions.jsonl"), records_per_shard, world)
  files = _files(path, fmt)
  if fmt == "jsonl":
    return [u for f in files for u in _jsonl_units(f, records_per_shard, os.path.dirname(f))]
  if fmt == "webdataset":
    return [Unit("webdataset", f) for f in files]
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  return [Unit("parquet", f, g) for f in files
          for g in range(pq.ParquetFile(f).metadata.num_row_groups)]


def _jsonl_units(path: str, per_shard: int, base_dir: str) -> list[Unit]:
  if not os.path.isfile(path):
    raise DataFormatError(f"caption file {path!r} does not exist")
  with open(path, "rb") as f:
    n = sum(1 for _ in f)
  return [Unit("jsonl", path, s, min(s + per_shard, n), base_dir)
          for s in range(0, max(n, 1), per_shard)]


def read_unit(unit: Unit, keys: Keys = Keys(), *, skip_bad: bool = False,
              stats: dict | None = None) -> Iterator[dict]:
  """Yields {"image_id", "caption", "image_path"} for every good record of the unit.

  A bad record raises `DataFormatError` naming file and line/sample, or is counted in
  `stats["skipped"]` when `skip_bad`.
  """
  stats = stats if stats is not None else {}
  stats.setdefault("skipped", 0)
  reader = {"jsonl": _read_jsonl, "webdataset": _read_tar, "parquet": _read_parquet}
  for where, record in reader[unit.format](unit, keys):
    if isinstance(record, str):  # An error message for this record.
      if skip_bad:
        stats["skipped"] += 1
        continue
      raise DataFormatError(f"{where}: {record}")
    yield record


def _check(record: dict, keys: Keys, default_id: str):
  caption = record.get(keys.caption)
  if not isinstance(caption, str):
    return f"missing or non-text caption field {keys.caption!r}"
  image = record.get(keys.image)
  if not isinstance(image, str) or not image:
    return f"missing image field {keys.image!r}"
  image_id = record.get(keys.image_id, default_id)
  return {"image_id": str(image_id), "caption": caption, "image_path": image}


def _read_jsonl(unit: Unit, keys: Keys):
  stem = os.path.splitext(os.path.basename(unit.path))[0]
  with open(unit.path, encoding="utf-8") as f:
    for i, line in enumerate(f):
      if i < unit.start:
        continue
      if i >= unit.stop:
        break
      where = f"{unit.path}:{i + 1}"
      if not line.strip():
        continue
      try:
        raw = json.loads(line)
      except ValueError as e:
        yield where, f"not valid JSON ({e})"
        continue
      if not isinstance(raw, dict):
        yield where, "a line must hold a JSON object"
        continue
      record = _check(raw, keys, f"{stem}_{i:08d}")
      if isinstance(record, dict):
        record["image_path"] = os.path.normpath(os.path.join(unit.base_dir, record["image_path"]))
      yield where, record


def _read_tar(unit: Unit, keys: Keys):
  samples: dict[str, dict] = {}
  order = []
  try:
    with tarfile.open(unit.path, "r|*") as tar:
      for member in tar:
        if not member.isfile():
          continue
        base = os.path.basename(member.name)
        key, _, ext = base.partition(".")
        key = os.path.join(os.path.dirname(member.name), key)
        ext = ext.lower()
        if key not in samples:
          samples[key] = {}
          order.append(key)
        if ext in IMAGE_EXTS:
          samples[key]["image"] = member.name
        elif ext in ("txt", "json"):
          samples[key][ext] = tar.extractfile(member).read()
  except (tarfile.TarError, EOFError, OSError) as e:
    raise DataFormatError(f"{unit.path}: not a readable tar shard ({e})") from None
  for key in order:
    s = samples[key]
    where = f"{unit.path}#{key}"
    meta = {}
    if "json" in s:
      try:
        meta = json.loads(s["json"])
      except ValueError as e:
        yield where, f"sample json is not valid JSON ({e})"
        continue
    if "image" not in s:
      yield where, f"sample has no image ({'/'.join(IMAGE_EXTS)})"
      continue
    caption = s["txt"].decode("utf-8", "replace") if "txt" in s else meta.get(keys.caption)
    if not isinstance(caption, str):
      yield where, "sample has neither a .txt caption nor a caption in its .json"
      continue
    image_id = meta.get(keys.image_id) or meta.get("key") or os.path.basename(key)
    yield where, {"image_id": str(image_id), "caption": caption,
                  "image_path": f"tar://{unit.path}#{s['image']}"}


def _read_parquet(unit: Unit, keys: Keys):
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  pf = pq.ParquetFile(unit.path)
  first = sum(pf.metadata.row_group(g).num_rows for g in range(unit.start))
  names = pf.schema_arrow.names
  caption_col = next((c for c in (keys.caption, "caption", "text", "TEXT") if c in names), None)
  if caption_col is None:
    raise DataFormatError(f"{unit.path}: no caption column ({keys.caption!r}, caption, text, "
                          f"TEXT); columns are {names}")
  path_col = keys.image if keys.image in names else None
  bytes_col = next((c for c in ("image", "jpg", "image_bytes") if c in names), None)
  if path_col is None and bytes_col is None:
    raise DataFormatError(f"{unit.path}: no image column ({keys.image!r} with paths, or image/"
                          f"jpg/image_bytes with bytes); columns are {names}")
  id_col = next((c for c in (keys.image_id, "key", "id") if c in names), None)
  table = pf.read_row_group(unit.start, columns=[c for c in (caption_col, path_col, id_col)
                                                 if c])
  stem = os.path.splitext(os.path.basename(unit.path))[0]
  base = os.path.dirname(unit.path)
  data = table.to_pydict()
  for i in range(table.num_rows):
    row = first + i
    where = f"{unit.path}#row={row}"
    caption = data[caption_col][i]
    if not isinstance(caption, str):
      yield where, f"caption column {caption_col!r} is empty"
      continue
    if path_col is not None:
      image = data[path_col][i]
      if not image:
        yield where, f"image path column {path_col!r} is empty"
        continue
      image = os.path.normpath(os.path.join(base, image))
    else:
      image = f"parquet://{unit.path}#row={row}"
    image_id = data[id_col][i] if id_col else f"{stem}_{row:08d}"
    yield where, {"image_id": str(image_id), "caption": caption, "image_path": image}


# ----------------------------------------------------------------------------------------
# Opening image references.

@functools.lru_cache(maxsize=4)
def _tar_index(path: str) -> dict[str, tarfile.TarInfo]:
  with tarfile.open(path) as tar:
    return {m.name: m for m in tar.getmembers() if m.isfile()}


@functools.lru_cache(maxsize=4)
def _parquet_rows(path: str):
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  pf = pq.ParquetFile(path)
  col = next(c for c in ("image", "jpg", "image_bytes") if c in pf.schema_arrow.names)
  return pf.read(columns=[col]).column(col)


def read_image_bytes(ref: str) -> bytes:
  """The encoded image behind an `image_path` written by the candidates step."""
  if ref.startswith("tar://"):
    path, _, member = ref[len("tar://"):].partition("#")
    info = _tar_index(path).get(member)
    if info is None:
      raise DataFormatError(f"{path}: no member {member!r}")
    with open(path, "rb") as f:
      f.seek(info.offset_data)
      return f.read(info.size)
  if ref.startswith("parquet://"):
    path, _, row = ref[len("parquet://"):].partition("#row=")
    value = _parquet_rows(path)[int(row)].as_py()
    if isinstance(value, dict):
      value = value.get("bytes")
    if not isinstance(value, (bytes, bytearray)):
      raise DataFormatError(f"{path}: row {row} holds no image bytes")
    return bytes(value)
  if storage.is_remote(ref):
    return storage.read_bytes(ref)
  with open(ref, "rb") as f:
    return f.read()
