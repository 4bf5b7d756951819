"""WebDataset tar shards as img2dataset and webdataset write them, local or in a bucket.

    00000.tar              000000001.jpg  000000001.txt  000000001.json  000000003.jpg ...
    00000.parquet          img2dataset's sidecar: every sample of the shard, failed ones too
    00000_stats.json       img2dataset's counts (not read)

Samples are grouped by webdataset's rule: the key is the member path up to the first dot of
its basename (`a.b/000000001.jpg` → `a.b/000000001`), extensions are lower-cased, and a
sample with the same extension twice is an error. Keys need not be contiguous: img2dataset
leaves failed downloads out of the tar and lists them, with their `status` and
`error_message`, in the sidecar parquet. Those are reported as upstream failures with their
keys, so that every sample of the input is accounted for.

The members are read with `tarfile` rather than `webdataset`'s iterators: the candidates step
needs only the captions, and keeps each image as a `tar://SHARD#MEMBER` reference that
`read_member` opens by offset later, instead of holding the bytes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import tarfile
from typing import Iterator

from rew_jax import storage

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


@dataclasses.dataclass(frozen=True)
class Upstream:
  """A sample that the downloader listed but could not fetch or resize."""
  key: str
  status: str
  error: str
  image_id: str = ""  # The sidecar's id column (`keys.image_id`, e.g. a saved `uid`), if any.


def open_binary(path: str):
  return storage.path(path).open("rb") if storage.is_remote(path) else open(path, "rb")


def sidecar_path(shard: str) -> str:
  return shard[:-len(".tar")] + ".parquet" if shard.endswith(".tar") else ""


def _sidecar(shard: str, id_column: str) -> list[dict]:
  """img2dataset's per-shard metadata rows ({key, status, error_message, id}), or []."""
  path = sidecar_path(shard)
  if not path or not storage.isfile(path):
    return []
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  try:
    with open_binary(path) as f:
      table = pq.read_table(f)
  except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError.
    raise ValueError(f"{path}: not a readable sidecar parquet ({e})") from None
  if "key" not in table.column_names or "status" not in table.column_names:
    return []  # Some other parquet beside the tar: not a sidecar.
  cols = [c for c in ("key", "status", "error_message", id_column)
          if c and c in table.column_names]
  return table.select(cols).to_pylist()


def _members(shard: str) -> tuple[list[str], dict[str, dict], list[tuple[str, str]]]:
  """(sample keys in tar order, key → {ext: member name or bytes}, [(where, error)])."""
  samples: dict[str, dict] = {}
  order, errors = [], []
  with open_binary(shard) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
    for member in tar:
      if not member.isfile():
        continue
      directory, base = os.path.split(member.name)
      stem, dot, ext = base.partition(".")
      if not dot or not stem:
        continue  # No extension, or a hidden file: not part of any sample (webdataset's rule).
      key = f"{directory}/{stem}" if directory else stem
      ext = ext.lower()
      if key not in samples:
        samples[key] = {}
        order.append(key)
      if ext in samples[key]:
        errors.append((key, f"duplicate member {member.name!r}: extension {ext!r} appears "
                            "twice in the sample"))
        continue
      if ext in IMAGE_EXTS:
        samples[key][ext] = member.name
      elif ext in ("txt", "json"):
        samples[key][ext] = tar.extractfile(member).read()
  return order, samples, errors


def read_shard(shard: str, keys) -> Iterator[tuple[str, dict | str | Upstream]]:
  """(where, record | error message | Upstream) for every sample of one shard.

  `keys.caption` is the caption field of the sample's JSON when it has no `.txt`;
  `keys.image_id` a JSON field for the id (e.g. DataComp's `uid`), else the JSON's `key`,
  else the tar key's basename.
  """
  try:
    order, samples, errors = _members(shard)
  except (tarfile.TarError, EOFError, OSError) as e:
    raise ValueError(f"{shard}: not a readable tar shard ({e})") from None
  bad = dict(errors)
  for key in order:
    where = f"{shard}#{key}"
    if key in bad:
      yield where, bad[key]
      continue
    s = samples[key]
    meta = {}
    if "json" in s:
      try:
        meta = json.loads(s["json"])
      except ValueError as e:
        yield where, f"sample json is not valid JSON ({e})"
        continue
      if not isinstance(meta, dict):
        yield where, "sample json is not an object"
        continue
    image = next((s[e] for e in IMAGE_EXTS if e in s), None)
    if image is None:
      yield where, f"sample has no image ({'/'.join(IMAGE_EXTS)})"
      continue
    caption = s["txt"].decode("utf-8", "replace") if "txt" in s else meta.get(keys.caption)
    if not isinstance(caption, str):
      yield where, ("sample has neither a .txt caption nor a caption field "
                    f"{keys.caption!r} in its .json")
      continue
    image_id = meta.get(keys.image_id) or meta.get("key") or os.path.basename(key)
    yield where, {"image_id": str(image_id), "caption": caption,
                  "image_path": f"tar://{shard}#{image}"}
  in_tar = {os.path.basename(k) for k in order}
  for row in _sidecar(shard, keys.image_id):
    key = str(row["key"])
    if row["status"] != "success":
      yield f"{sidecar_path(shard)}#{key}", Upstream(
          key, str(row["status"]), str(row.get("error_message") or ""),
          str(row.get(keys.image_id) or ""))
    elif key not in in_tar:
      yield (f"{shard}#{key}", f"listed as downloaded in {os.path.basename(sidecar_path(shard))}"
                               " but absent from the tar")


@functools.lru_cache(maxsize=8)
def _index(shard: str) -> dict[str, tuple[int, int]]:
  with open_binary(shard) as f, tarfile.open(fileobj=f) as tar:
    return {m.name: (m.offset_data, m.size) for m in tar.getmembers() if m.isfile()}


def read_member(shard: str, member: str) -> bytes | None:
  """The bytes of one member (None when the shard has no such member)."""
  where = _index(shard).get(member)
  if where is None:
    return None
  offset, size = where
  with open_binary(shard) as f:
    f.seek(offset)
    return f.read(size)
