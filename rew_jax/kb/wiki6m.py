"""The entity knowledge base: a streaming Wiki6M reader and a compact on-disk index.

The real `Wiki6M_ver_1_0.jsonl.gz` holds 6,084,491 entities in 6.9 GB, so it is read once,
line by line, and distilled into flat files that reopen in well under a second:

  meta.json                 count, format version, the source file's path/size/mtime
  ids.bin + ids.idx.npy     UTF-8 blob of wikidata ids + int64 offsets[N + 1]
  titles.bin + titles.idx.npy
  summaries.bin + summaries.idx.npy   (summary, or the start of the content; may be empty)
  id_order.npy              rows sorted by id bytes → id→row by binary search
  keys.bin + keys.idx.npy + keys_row.npy + keys_kind.npy
                            (normalised name, row) pairs sorted by name: kind 0 is the
                            normalised title, kind 1 an alias (title without "(…)")

Nothing is a Python dict of 6M strings: lookups binary-search memory-mapped blobs, and the
only per-entity Python objects live during the one-off build.
"""

from __future__ import annotations

import array
import bisect
import contextlib
import dataclasses
import glob
import gzip
import io
import json
import os
import re
import shutil
import unicodedata
import zlib
from typing import Iterator, Sequence

import numpy as np

from rew_jax import storage
from rew_jax.errors import UserError

INDEX_VERSION = 1
KIND_TITLE, KIND_ALIAS = 0, 1
_APOSTROPHES = "'’`ʼ‘"
_PAREN_SUFFIX = re.compile(r"\s*\([^()]*\)\s*$")


class KBFormatError(UserError):
  """A Wiki6M file that cannot be read: malformed line, missing field, duplicate id..."""


# ----------------------------------------------------------------------------------------
# Names.

def normalize_name(text: str) -> str:
  """Case-, accent- and punctuation-insensitive form of an entity name.

  "Crimson-Striped  Kestrel" and "crimson striped kestrel" map to the same string;
  "Café" to "cafe"; "Hunter's" to "hunters"; "&" reads as "and".
  """
  text = unicodedata.normalize("NFKD", text)
  text = "".join(c for c in text if not unicodedata.combining(c))
  text = text.casefold()
  for a in _APOSTROPHES:
    text = text.replace(a, "")
  text = text.replace("&", " and ")
  text = "".join(c if c.isalnum() else " " for c in text)
  return " ".join(text.split())


def base_name(title: str) -> str:
  """The title without a trailing parenthetical: "Mercury (planet)" → "Mercury"."""
  return _PAREN_SUFFIX.sub("", title).strip()


def aliases(title: str) -> list[str]:
  """Normalised alternative names of a title (not including its own normalised form)."""
  own = normalize_name(title)
  out = []
  base = normalize_name(base_name(title))
  if base and base != own:
    out.append(base)
  return out


# ----------------------------------------------------------------------------------------
# Streaming reader.

@dataclasses.dataclass(frozen=True)
class Entity:
  wikidata_id: str
  title: str
  summary: str
  line: int  # 1-based line in the source file.
  content: str = ""  # wikipedia_content, when read with `with_content=True`.
  image_url: str = ""  # wikipedia_image_url; most entities have none.


@contextlib.contextmanager
def _open_text(path: str) -> Iterator[io.TextIOBase]:
  with storage.open_file(path, "rb") as raw:  # Local or a bucket's object, streamed.
    binary = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
    yield io.TextIOWrapper(binary, encoding="utf-8")


def read_wiki6m(path: str, *, skip_bad: bool = False, max_summary_chars: int = 2000,
                stats: dict | None = None, with_content: bool = False) -> Iterator[Entity]:
  """Streams the entities of a Wiki6M jsonl(.gz) file (full or title-only variant).

  `wikidata_id` and `wikipedia_title` are required; `wikipedia_summary`,
  `wikipedia_content` and `wikipedia_image_url` are optional (absent or null: empty; the
  summary falls back to the content). Bad lines (unparsable JSON, a missing/empty id or
  title, a summary that is neither text nor null) raise `KBFormatError` naming the file and
  line, or are counted in `stats["skipped"]` when `skip_bad`. A truncated or
  corrupt .gz always raises: silently losing the tail of the KB is never what one wants.
  """
  if not storage.isfile(path):
    raise KBFormatError(f"knowledge base file {path!r} does not exist")
  stats = stats if stats is not None else {}
  stats.setdefault("skipped", 0)
  lineno = 0
  try:
    with _open_text(path) as f:
      for lineno, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          record = json.loads(line)
          if not isinstance(record, dict):
            raise ValueError("a line must hold a JSON object")
          entity = _entity(record, lineno, max_summary_chars, with_content)
        except (ValueError, TypeError) as e:
          if skip_bad:
            stats["skipped"] += 1
            continue
          raise KBFormatError(f"{path}:{lineno}: {e}") from None
        yield entity
  except (EOFError, gzip.BadGzipFile, zlib.error) as e:
    raise KBFormatError(
        f"{path}: compressed stream is truncated or corrupt after line {lineno} ({e}); "
        "re-download or re-copy the file") from None
  except UnicodeDecodeError as e:
    raise KBFormatError(f"{path}:{lineno + 1}: not UTF-8 text ({e})") from None


def _entity(record: dict, lineno: int, max_summary_chars: int,
            with_content: bool = False) -> Entity:
  qid = record.get("wikidata_id")
  if not isinstance(qid, str) or not qid.strip():
    raise ValueError(f"missing or empty 'wikidata_id' (got {qid!r})")
  title = record.get("wikipedia_title")
  if not isinstance(title, str) or not title.strip():
    raise ValueError(f"entity {qid}: missing or empty 'wikipedia_title' (got {title!r})")
  summary = record.get("wikipedia_summary")
  if summary and not isinstance(summary, str):
    raise ValueError(f"entity {qid}: 'wikipedia_summary' is {type(summary).__name__}, "
                     "expected text or null")
  content = _optional_text(record, "wikipedia_content")
  summary = summary or content  # A summary that is absent, null or "" reads as the content.
  return Entity(qid.strip(), title.strip(), summary[:max_summary_chars], lineno,
                content if with_content else "",
                _optional_text(record, "wikipedia_image_url").strip())


def _optional_text(record: dict, key: str) -> str:
  """A field only some entities have, and that no reader depends on: anything but text
  reads as absent."""
  value = record.get(key)
  return value if isinstance(value, str) else ""


# ----------------------------------------------------------------------------------------
# Flat string tables on disk.

class StringTable(Sequence[str]):
  """N strings stored as one UTF-8 blob + int64 offsets, memory-mapped."""

  def __init__(self, blob: np.ndarray, offsets: np.ndarray):
    self._blob, self._offsets = blob, offsets

  @classmethod
  def open(cls, prefix: str) -> "StringTable":
    offsets = np.load(prefix + ".idx.npy", mmap_mode="r")
    size = os.path.getsize(prefix + ".bin")
    blob = (np.memmap(prefix + ".bin", np.uint8, mode="r") if size
            else np.zeros(0, np.uint8))
    return cls(blob, offsets)

  def __len__(self) -> int:
    return len(self._offsets) - 1

  def raw(self, i: int) -> bytes:
    return self._blob[self._offsets[i]:self._offsets[i + 1]].tobytes()

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    if i < 0:
      i += len(self)
    if not 0 <= i < len(self):
      raise IndexError(i)
    return self.raw(i).decode("utf-8")


class _TableWriter:
  def __init__(self, prefix: str):
    self.prefix = prefix
    self._f = open(prefix + ".bin.tmp", "wb")
    self._offsets = array.array("q", [0])

  def add(self, text: str | bytes) -> None:
    data = text.encode("utf-8") if isinstance(text, str) else text
    self._f.write(data)
    self._offsets.append(self._offsets[-1] + len(data))

  def close(self) -> None:
    self._f.close()
    np.save(self.prefix + ".idx.npy", np.frombuffer(self._offsets, np.int64))
    os.replace(self.prefix + ".bin.tmp", self.prefix + ".bin")


class _SortedView:
  """`bisect` over rows of a table in a given order, compared as bytes."""

  def __init__(self, table: StringTable, order: np.ndarray | None = None):
    self.table, self.order = table, order  # order None: the table is already sorted.

  def __len__(self):
    return len(self.table)

  def __getitem__(self, i):
    return self.table.raw(i if self.order is None else int(self.order[i]))


# Files other modules derive from an index and keep beside it: stale once it is rebuilt.
DERIVED = ("ald_codes.npz", "name_trie.npz", "code_trie.npz", "bm25", "embeddings-*")


def _remove_derived(index_dir: str) -> None:
  for pattern in DERIVED:
    for path in glob.glob(os.path.join(index_dir, pattern)):
      if os.path.isdir(path):
        shutil.rmtree(path)
      else:
        os.remove(path)


def _source_stamp(path: str) -> dict:
  st = storage.path(path).stat()
  return {"path": storage.absolute(path), "size": st.length, "mtime": int(st.mtime)}


# ----------------------------------------------------------------------------------------
# The knowledge base.

class EntityKB:
  """An opened KB index: rows 0..N-1 in source order, with id and name lookups."""

  def __init__(self, index_dir: str):
    storage.require_local(index_dir, "KB index")  # Memory-mapped tables.
    meta_path = os.path.join(index_dir, "meta.json")
    if not os.path.isfile(meta_path):
      raise UserError(f"{index_dir!r} is not a KB index (no meta.json); build it with "
                      "EntityKB.build(source, index_dir)")
    with open(meta_path) as f:
      self.meta = json.load(f)
    if self.meta.get("version") != INDEX_VERSION:
      raise UserError(f"{meta_path}: index version {self.meta.get('version')} is not "
                      f"{INDEX_VERSION}; rebuild the index")
    self.index_dir = index_dir
    j = lambda name: os.path.join(index_dir, name)
    self.ids = StringTable.open(j("ids"))
    self.titles = StringTable.open(j("titles"))
    self.summaries = StringTable.open(j("summaries"))
    self._id_order = np.load(j("id_order.npy"), mmap_mode="r")
    self._keys = StringTable.open(j("keys"))
    self._key_row = np.load(j("keys_row.npy"), mmap_mode="r")
    self._key_kind = np.load(j("keys_kind.npy"), mmap_mode="r")

  def __len__(self) -> int:
    return len(self.ids)

  def path(self, name: str) -> str:
    """A file next to the index (embeddings, BM25, trie and codes live there)."""
    return os.path.join(self.index_dir, name)

  # -- Building.

  @classmethod
  def build(cls, source: str, index_dir: str, *, skip_bad: bool = False,
            max_summary_chars: int = 2000, progress: bool = True) -> "EntityKB":
    """Streams `source` once and writes the index to `index_dir`; returns it opened."""
    os.makedirs(index_dir, exist_ok=True)
    meta_path = os.path.join(index_dir, "meta.json")
    if os.path.exists(meta_path):
      os.remove(meta_path)  # An index without meta.json is incomplete by definition.
    _remove_derived(index_dir)
    j = lambda name: os.path.join(index_dir, name)
    writers = {name: _TableWriter(j(name)) for name in ("ids", "titles", "summaries")}
    id_bytes: list[bytes] = []
    lines = array.array("q")
    keys: list[tuple[bytes, int, int]] = []
    stats = {"skipped": 0}
    entities = read_wiki6m(source, skip_bad=skip_bad, max_summary_chars=max_summary_chars,
                           stats=stats)
    if progress:
      import tqdm  # pylint: disable=g-import-not-at-top
      entities = tqdm.tqdm(entities, desc="KB index", unit=" entities", mininterval=2)
    for row, e in enumerate(entities):
      writers["ids"].add(e.wikidata_id)
      writers["titles"].add(e.title)
      writers["summaries"].add(e.summary)
      id_bytes.append(e.wikidata_id.encode("utf-8"))
      lines.append(e.line)
      norm = normalize_name(e.title)
      if norm:
        keys.append((norm.encode("utf-8"), KIND_TITLE, row))
      for alias in aliases(e.title):
        keys.append((alias.encode("utf-8"), KIND_ALIAS, row))
    for w in writers.values():
      w.close()
    if not id_bytes:
      raise KBFormatError(f"{source}: holds no entities")

    id_order = np.array(sorted(range(len(id_bytes)), key=id_bytes.__getitem__), np.int64)
    for a, b in zip(id_order[:-1], id_order[1:]):
      if id_bytes[a] == id_bytes[b]:
        raise KBFormatError(
            f"{source}: duplicate wikidata_id {id_bytes[a].decode()!r} on lines "
            f"{lines[min(a, b)]} and {lines[max(a, b)]}")
    np.save(j("id_order.npy"), id_order)
    del id_bytes

    keys.sort()
    kw = _TableWriter(j("keys"))
    for key, _, _ in keys:
      kw.add(key)
    kw.close()
    np.save(j("keys_row.npy"), np.array([r for _, _, r in keys], np.int64))
    np.save(j("keys_kind.npy"), np.array([k for _, k, _ in keys], np.int8))
    meta = {"version": INDEX_VERSION, "count": len(lines), "skipped": stats["skipped"],
            "source": _source_stamp(source), "max_summary_chars": max_summary_chars}
    with open(meta_path + ".tmp", "w") as f:
      json.dump(meta, f, indent=1)
    os.replace(meta_path + ".tmp", meta_path)
    return cls(index_dir)

  @classmethod
  def open_or_build(cls, source: str, index_dir: str, **kw) -> "EntityKB":
    """Reopens the index when it was built from this very file, else (re)builds it."""
    try:
      kb = cls(index_dir)
      if kb.meta.get("source") == _source_stamp(source):
        return kb
    except UserError:
      pass
    return cls.build(source, index_dir, **kw)

  # -- Lookups.

  def row_of(self, wikidata_id: str) -> int:
    """The row of an id; KeyError when the KB has no such entity."""
    key = wikidata_id.encode("utf-8")
    view = _SortedView(self.ids, self._id_order)
    i = bisect.bisect_left(view, key)
    if i < len(view) and view[i] == key:
      return int(self._id_order[i])
    raise KeyError(wikidata_id)

  def __contains__(self, wikidata_id: str) -> bool:
    try:
      self.row_of(wikidata_id)
      return True
    except KeyError:
      return False

  def entity(self, row: int) -> Entity:
    return Entity(self.ids[row], self.titles[row], self.summaries[row], -1)

  def rows_by_name(self, name: str, *, normalized: bool = False) -> list[tuple[int, int]]:
    """(row, kind) pairs whose normalised title (kind 0) or alias (kind 1) equals `name`."""
    key = (name if normalized else normalize_name(name)).encode("utf-8")
    if not key:
      return []
    view = _SortedView(self._keys)
    lo = bisect.bisect_left(view, key)
    hi = bisect.bisect_right(view, key, lo=lo)
    return [(int(self._key_row[i]), int(self._key_kind[i])) for i in range(lo, hi)]
