"""Readers for image–caption data in the formats people have, split into shard-sized units.

Formats (`data.format`):
  world       the embedded world's directory: web/captions.jsonl, image paths relative to it
  jsonl       one object per line with a caption and an image path (relative to the file's
              directory unless absolute), e.g. {"image_id", "caption", "image_path"}
  webdataset  tar shards as img2dataset and webdataset write them (`rew_jax.kb.tar_shards`):
              per sample `KEY.jpg|png|webp` + `KEY.txt` and/or `KEY.json`, failed downloads
              counted from img2dataset's sidecar parquet; local or gs://
  parquet     a caption column plus an image path or URL column, or an image column holding
              bytes (a binary column, or a {"bytes", "path"} struct as HF datasets write it)
  auto        chosen from the path (a directory with web/captions.jsonl is a world)

Column names (`data.columns`): the keys below, or the spelling of a public dataset's url
list (`COLUMNS`: laion, coyo, cc12m, datacomp). Every record comes out as {"image_id",
"caption", "image_path"}; `image_path` is an absolute path, an http(s) URL (fetched when
curated: for millions of images, fetch them first with img2dataset) or a reference `tar://ABS.tar#MEMBER` / `parquet://ABS.parquet#row=N` that
`read_image_bytes` opens. A unit is the work of one output shard: a line range of a jsonl
file, one tar file, or one parquet row group.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
from typing import Iterator

from rew_jax import storage
from rew_jax.errors import UserError
from rew_jax.kb import tar_shards

FORMATS = ("auto", "world", "jsonl", "webdataset", "parquet")
IMAGE_EXTS = tar_shards.IMAGE_EXTS
_EXT = {"jsonl": (".jsonl", ".json"), "webdataset": (".tar",), "parquet": (".parquet",)}


class DataFormatError(UserError):
  """An input record or file that cannot be read as image–caption data."""


class FetchError(DataFormatError):
  """An image URL that could not be fetched (a 404, a refused connection, a timeout)."""


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


# The column spellings of the public url lists (and of img2dataset's per-sample JSON, whose
# id is `key`, or a saved column such as DataComp's `uid`). An empty id: `<file>_<row>`.
COLUMNS = {
    "laion": Keys(caption="TEXT", image="URL", image_id=""),
    "coyo": Keys(caption="text", image="url", image_id="id"),
    "cc12m": Keys(caption="caption", image="url", image_id=""),
    "datacomp": Keys(caption="text", image="url", image_id="uid"),
}


def keys_for(columns: str, caption: str, image: str, image_id: str) -> Keys:
  """`data.columns` (a COLUMNS name) when set, else the configured keys."""
  if not columns:
    return Keys(caption, image, image_id)
  if columns not in COLUMNS:
    raise DataFormatError(f"unknown data.columns {columns!r}; choose one of "
                          f"{', '.join(COLUMNS)}, or leave it empty and set caption_key, "
                          "image_key, id_key")
  return COLUMNS[columns]


def _is_url(path: str) -> bool:
  return path.startswith(("http://", "https://"))


def _files(path: str, fmt: str) -> list[str]:
  if storage.is_remote(path):  # A bucket: a folder of shards, or a glob.
    directory, pattern = (path, "*") if storage.isdir(path) else os.path.split(path)
    files = [f for f in storage.glob(directory, pattern) if f.endswith(_EXT[fmt])]
  elif os.path.isdir(path):
    files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(_EXT[fmt]))
  elif any(c in path for c in "*?["):
    files = sorted(glob.glob(path))
  else:
    files = [path] if os.path.isfile(path) else []
  if not files:
    raise DataFormatError(f"no {fmt} input found at {path!r}")
  return sorted(storage.absolute(f) for f in files)


def detect_format(path: str) -> str:
  if not storage.is_remote(path) and os.path.isfile(os.path.join(path, "web", "captions.jsonl")):
    return "world"
  probe = path
  if storage.isdir(path):
    names = sorted(storage.listdir(path))
    # img2dataset writes a sidecar parquet beside each tar: the tars are the data.
    probe = next((n for ext in (".tar", ".parquet", ".jsonl") for n in names
                  if n.endswith(ext)), "")
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
  storage.require_local(path, "parquet input")
  return [Unit("parquet", f, g) for f in files
          for g in range(pq.ParquetFile(f).metadata.num_row_groups)]


def _jsonl_units(path: str, per_shard: int, base_dir: str) -> list[Unit]:
  storage.require_local(path, "jsonl input")
  if not os.path.isfile(path):
    raise DataFormatError(f"caption file {path!r} does not exist")
  with open(path, "rb") as f:
    n = sum(1 for _ in f)
  return [Unit("jsonl", path, s, min(s + per_shard, n), base_dir)
          for s in range(0, max(n, 1), per_shard)]


def read_unit(unit: Unit, keys: Keys = Keys(), *, skip_bad: bool = False,
              stats: dict | None = None) -> Iterator[dict]:
  """Yields {"image_id", "caption", "image_path"} for every good record of the unit.

  A bad record raises `DataFormatError` naming file and line/sample, or, when `skip_bad`,
  is counted in `stats["skipped"]` and listed in `stats["skips"]` ({"where", "reason"}). A
  sample that img2dataset failed to fetch is no error: it is counted in
  `stats["upstream"]` (by status) and listed in `stats["upstream_failed"]` with its key.
  """
  stats = stats if stats is not None else {}
  stats.setdefault("skipped", 0)
  reader = {"jsonl": _read_jsonl, "webdataset": _read_tar, "parquet": _read_parquet}
  for where, record in reader[unit.format](unit, keys):
    if isinstance(record, tar_shards.Upstream):
      by_status = stats.setdefault("upstream", {})
      by_status[record.status] = by_status.get(record.status, 0) + 1
      stats.setdefault("upstream_failed", []).append(dataclasses.asdict(record))
      continue
    if isinstance(record, str):  # An error message for this record.
      if skip_bad:
        stats["skipped"] += 1
        stats.setdefault("skips", []).append({"where": where, "reason": record})
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
      if isinstance(record, dict) and not storage.is_remote(record["image_path"]):
        record["image_path"] = os.path.normpath(os.path.join(unit.base_dir, record["image_path"]))
      yield where, record


def _read_tar(unit: Unit, keys: Keys):
  try:
    yield from tar_shards.read_shard(unit.path, keys)
  except ValueError as e:  # The whole shard is unreadable.
    raise DataFormatError(str(e)) from None


def _read_parquet(unit: Unit, keys: Keys):
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  pf = pq.ParquetFile(unit.path)
  first = sum(pf.metadata.row_group(g).num_rows for g in range(unit.start))
  names = pf.schema_arrow.names
  caption_col = next((c for c in (keys.caption, "caption", "text", "TEXT") if c in names), None)
  if caption_col is None:
    raise DataFormatError(f"{unit.path}: no caption column ({keys.caption!r}, caption, text, "
                          f"TEXT); columns are {names}")
  path_col = next((c for c in (keys.image, "url", "URL") if c in names), None)
  bytes_col = next((c for c in ("image", "jpg", "image_bytes") if c in names), None)
  if path_col is None and bytes_col is None:
    raise DataFormatError(f"{unit.path}: no image column ({keys.image!r} with paths or URLs, "
                          f"url/URL, or image/jpg/image_bytes with bytes); columns are {names}")
  if bytes_col is not None and path_col in ("url", "URL"):
    path_col = None  # Bytes beside their source URL: the bytes are the image.
  id_col = next((c for c in (keys.image_id, "key", "id", "uid") if c and c in names), None)
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
      if not storage.is_remote(image):
        image = os.path.normpath(os.path.join(base, image))
    else:
      image = f"parquet://{unit.path}#row={row}"
    image_id = data[id_col][i] if id_col else f"{stem}_{row:08d}"
    yield where, {"image_id": str(image_id), "caption": caption, "image_path": image}


# ----------------------------------------------------------------------------------------
# Opening image references.

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
    data = tar_shards.read_member(path, member)
    if data is None:
      raise DataFormatError(f"{path}: no member {member!r}")
    return data
  if ref.startswith("parquet://"):
    path, _, row = ref[len("parquet://"):].partition("#row=")
    value = _parquet_rows(path)[int(row)].as_py()
    if isinstance(value, dict):
      value = value.get("bytes")
    if not isinstance(value, (bytes, bytearray)):
      raise DataFormatError(f"{path}: row {row} holds no image bytes")
    return bytes(value)
  if _is_url(ref):
    import fsspec  # pylint: disable=g-import-not-at-top
    try:  # fsspec's HTTP filesystem (aiohttp), which raises many types: web data fails often.
      with fsspec.open(ref, "rb") as f:
        return f.read()
    except Exception as e:  # pylint: disable=broad-except
      raise FetchError(f"cannot fetch {ref} ({type(e).__name__}: {e})") from None
  if storage.is_remote(ref):
    return storage.read_bytes(ref)
  with open(ref, "rb") as f:
    return f.read()
