"""What curation reads: candidate shards, images, and the KB (titles, summaries, resolver).

Candidate shards are the candidates step's output (jsonl, one line per image):

    W/candidates/candidates-00000-of-0000N.jsonl
      {"image_id", "caption", "image_path", "candidates": [{"entity_id", "name", "score"}]}

`image_path` is absolute, a `tar://` / `parquet://` reference (`rew_jax.kb.sources`), or
relative to the image root (`curation.image_root`, default the world directory). A malformed line is a `UserError` naming file and line, or a counted skip
when `skip_bad_inputs` is set.

Every image is decoded cheaply before it is curated (`check_image`: a JPEG at 1/8 scale,
other formats whole): web data holds truncated and corrupt files, and one must neither
reach the LLM nor the records, where it would end a training run. An undecodable image is
a `BadImageError`, which the runners turn into a counted skip of the report.
"""

from __future__ import annotations

import functools
import io
import json
import os
import threading

from rew_jax import storage
from rew_jax.curation.core import Item
from rew_jax.errors import UserError
from rew_jax.records import Candidate, SkipCounter

SHARD_GLOB = "candidates-*.jsonl"


class InputError(UserError):
  """A candidates shard or image that cannot be read."""


class BadImageError(InputError):
  """An image file that is there but cannot be decoded (truncated, corrupt, not an image)."""


def check_image(data: bytes, where: str) -> None:
  """Raises BadImageError unless `data` decodes as an image.

  A JPEG is decoded at 1/8 scale (`draft`: the DCT skips most of the work, so the check
  costs a fraction of a full decode) to its last scan line, which catches truncation;
  `verify()` alone passes a truncated JPEG.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(io.BytesIO(data)) as img:
      if img.format == "JPEG":
        img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
      img.load()
  except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError...).
    raise BadImageError(f"{where}: cannot decode image ({len(data)} bytes; "
                        f"{type(e).__name__}: {e})") from None


def candidate_shards(directory: str) -> list[str]:
  paths = storage.glob(directory, SHARD_GLOB) if storage.isdir(directory) else []
  if not paths:
    raise InputError(f"{directory}: no candidate shards ({SHARD_GLOB}); run the candidates "
                     "step first")
  return paths


def _item(row, shard: str, index: int) -> Item:
  if not isinstance(row, dict):
    raise ValueError(f"expected a JSON object, got {type(row).__name__}")
  for key in ("image_id", "image_path"):
    if not isinstance(row.get(key), str) or not row[key]:
      raise ValueError(f"field {key!r} is missing or not a non-empty string")
  caption = row.get("caption", "")
  if not isinstance(caption, str):
    raise ValueError("field 'caption' is not a string")
  cands = row.get("candidates", [])
  if not isinstance(cands, list):
    raise ValueError("field 'candidates' is not a list")
  out = []
  for j, c in enumerate(cands):
    if (not isinstance(c, dict) or not isinstance(c.get("entity_id"), str)
        or not isinstance(c.get("name"), str)
        or not isinstance(c.get("score"), (int, float)) or isinstance(c.get("score"), bool)):
      raise ValueError(f"candidates[{j}] needs entity_id (str), name (str), score (number)")
    out.append(Candidate(c["entity_id"], c["name"], float(c["score"])))
  return Item(shard=shard, index=index, image_id=row["image_id"], caption=caption,
              image_path=row["image_path"], candidates=tuple(out))


def item_from_row(row: dict, shard: str = "", index: int = 0) -> Item:
  """The item of one candidates line (a dict: image_id, caption, image_path, candidates)."""
  try:
    return _item(row, shard, index)
  except ValueError as e:
    raise InputError(f"{shard or 'row'}:{index + 1}: {e}") from None


def read_items(path: str, skipped: SkipCounter | None = None) -> list[Item]:
  """All items of one shard, in line order; `skipped` given → bad lines are counted skips."""
  shard = os.path.basename(path)
  items = []
  with storage.open_file(path, encoding="utf-8") as f:  # Local or gs://.
    for lineno, line in enumerate(f):
      if not line.strip():
        continue
      try:
        items.append(_item(json.loads(line), shard, lineno))
      except ValueError as e:  # json.JSONDecodeError is a ValueError.
        message = f"{path}:{lineno + 1}: {e}"
        if skipped is None:
          raise InputError(message) from None
        skipped.add(message, "bad candidates line")
  return items


def load_image(item: Item, image_root: str, check: bool = False) -> tuple[bytes, str]:
  """(encoded bytes, MIME type) of the item's image; with `check`, a BadImageError when it
  does not decode."""
  from rew_jax.kb import sources  # pylint: disable=g-import-not-at-top
  path = item.image_path
  if not (os.path.isabs(path) or storage.is_remote(path)
          or path.startswith(("tar://", "parquet://"))):
    path = os.path.join(image_root, path)
  try:
    data = sources.read_image_bytes(path)
  except sources.FetchError as e:  # A dead link: web data, a counted skip like a bad image.
    raise BadImageError(f"{item.shard}:{item.index + 1} ({item.image_id}): {e}") from None
  except sources.DataFormatError as e:
    raise InputError(f"{item.shard}:{item.index + 1} ({item.image_id}): {e}") from None
  except OSError as e:
    raise InputError(f"{item.shard}:{item.index + 1} ({item.image_id}): cannot read image "
                     f"{path} ({e.strerror})") from None
  if not data:
    raise InputError(f"{item.shard}:{item.index + 1} ({item.image_id}): image {path} is empty")
  if check:
    check_image(data, f"{item.shard}:{item.index + 1} ({item.image_id}) image {path}")
  mime = ("image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else
          "image/webp" if data[8:12] == b"WEBP" else "image/jpeg")
  return data, mime


class _CachedKB:
  """An `EntityKB` whose id → row lookups are memoised: each is a binary search over a
  memory-mapped table (~0.1 ms), and curation asks for the same candidates again and again."""

  def __init__(self, kb, cache_size: int = 1 << 17):
    self._kb = kb
    self.row_of = functools.lru_cache(maxsize=cache_size)(kb.row_of)

  def __getattr__(self, name):
    return getattr(self._kb, name)

  def __len__(self):
    return len(self._kb)

  def __contains__(self, entity_id):
    try:
      self.row_of(entity_id)
      return True
    except KeyError:
      return False


class KBLookup:
  """Titles, summaries and name resolution over an `EntityKB` (rew_jax.kb)."""

  def __init__(self, kb, resolver):
    self.kb, self.resolver = kb, resolver
    self._lock = threading.Lock()  # bm25s and the memmapped tables are shared by threads.

  @classmethod
  def open(cls, kb_source: str, index_dir: str) -> "KBLookup":
    from rew_jax.kb.bm25 import TitleBM25  # pylint: disable=g-import-not-at-top
    from rew_jax.kb.resolver import NameResolver  # pylint: disable=g-import-not-at-top
    from rew_jax.kb.wiki6m import EntityKB  # pylint: disable=g-import-not-at-top
    if not storage.isfile(kb_source):
      raise InputError(f"KB file {kb_source!r} does not exist (set curation.kb_source)")
    kb = _CachedKB(EntityKB.open_or_build(kb_source, index_dir, progress=False))
    return cls(kb, NameResolver(kb, bm25=TitleBM25.open_or_build(kb._kb)))  # pylint: disable=protected-access

  @classmethod
  def open_index(cls, index_dir: str) -> "KBLookup":
    """Opens a built KB index and its BM25 index read-only (workers): never builds."""
    from rew_jax.kb.bm25 import TitleBM25  # pylint: disable=g-import-not-at-top
    from rew_jax.kb.resolver import NameResolver  # pylint: disable=g-import-not-at-top
    from rew_jax.kb.wiki6m import EntityKB  # pylint: disable=g-import-not-at-top
    kb = _CachedKB(EntityKB(index_dir))
    try:
      bm25 = TitleBM25.load(kb.path("bm25"))
    except (OSError, ValueError, KeyError) as e:
      raise InputError(f"{index_dir}: no BM25 title index ({e}); build it first") from None
    if bm25.num != len(kb):
      raise InputError(f"{index_dir}: the BM25 index is stale ({bm25.num} titles, the KB "
                       f"{len(kb)}); build it again")
    return cls(kb, NameResolver(kb, bm25=bm25))

  def _row(self, entity_id: str) -> int | None:
    try:
      return self.kb.row_of(entity_id)
    except KeyError:
      return None

  @functools.lru_cache(maxsize=1 << 16)
  def title(self, entity_id: str) -> str:
    row = self._row(entity_id)
    return "" if row is None else self.kb.titles[row]

  @functools.lru_cache(maxsize=1 << 16)
  def summary(self, entity_id: str) -> str:
    row = self._row(entity_id)
    return "" if row is None else self.kb.summaries[row]

  def resolve(self, name: str, candidate_ids=()) -> tuple[str | None, str]:
    with self._lock:
      r = self.resolver.resolve(name, candidate_ids)
    return r.entity_id, r.method
