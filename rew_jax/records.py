"""REW records: the contract between curation and training.

One record per image, serialized with msgpack into deterministic bytes (fixed key order,
float64 scores, bytes kept apart from text), stored in ArrayRecord shards beside a JSON
manifest:

    DIR/rew-00000.array_record ... DIR/rew-000NN.array_record
    DIR/manifest.json   {"format", "schema_version", "source", "curation_config_hash",
                         "total", "counts_by_status", "shards": [{name, count, sha256,
                         bytes, counts_by_status}]}

Shards and the manifest are committed atomically (written under a temporary name, then
renamed; on an object store, uploaded whole), so a crashed writer never leaves a half shard
under a final name. DIR may be a `gs://` URL: everything goes through `rew_jax.storage`.
The ArrayRecord library opens only local files, so a shard is written to a local file and
then uploaded, and a remote shard is read from a local copy (`storage.local_input`, cached
under $REW_JAX_CACHE_DIR, checked against the manifest's size). Every reading
problem (truncated shard, wrong count or hash, undecodable or mistyped record, unknown schema
version) is a `RecordError` naming the shard and the record index, unless the reader is told
to skip, in which case it is counted in a `SkipCounter` and reported.

CLI: `python -m rew_jax records inspect DIR [--samples N] [--check-hashes]`.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
from typing import Any, Iterable, Iterator, Sequence

import msgpack

from rew_jax import storage
from rew_jax.errors import UserError

SCHEMA_VERSION = 1
FORMAT = "rew-records"
MANIFEST_NAME = "manifest.json"
SHARD_SUFFIX = ".array_record"
# group_size:1 keeps random access cheap for Grain; images are already compressed.
WRITER_OPTIONS = "group_size:1,uncompressed"

# `candidate`: an un-curated Entity-WebLI record labelled with its top-1 retrieved candidate
# (the baseline the paper compares against). The others are the LLM curator's verdicts.
STATUSES = ("kept", "corrected", "abstained", "unresolved", "candidate")


class RecordError(UserError):
  """A shard, record or manifest that cannot be read as the REW format says."""


# --------------------------------------------------------------------------------------------
# The record type.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Candidate:
  entity_id: str
  name: str
  score: float


@dataclasses.dataclass(frozen=True)
class QA:
  question: str
  answer: str


@dataclasses.dataclass(frozen=True)
class RewRecord:
  """One curated web image. Lists may be given as lists of dicts; they are stored as tuples."""
  image_id: str
  image: bytes
  caption: str = ""
  candidates: tuple[Candidate, ...] = ()
  entity_id: str = ""
  entity_name: str = ""
  curation_status: str = "candidate"
  backend: str = ""
  rationale: str = ""
  qa: tuple[QA, ...] = ()
  split: str = ""
  question: str = ""

  def __post_init__(self):
    checked = _check_fields({key: getattr(self, key) for key in _ORDER},
                            where=f"record {self.image_id!r}")
    for name in ("candidates", "qa"):
      object.__setattr__(self, name, checked[name])


# Field name → expected Python type of the stored value, in encoding order.
_SCALARS = {
    "image_id": str, "image": bytes, "caption": str, "entity_id": str, "entity_name": str,
    "curation_status": str, "backend": str, "rationale": str, "split": str, "question": str,
}
_ORDER = ("image_id", "image", "caption", "candidates", "entity_id", "entity_name",
          "curation_status", "backend", "rationale", "qa", "split", "question")
_REQUIRED = ("image_id", "image")


def _type_name(value: Any) -> str:
  return type(value).__name__


def _check_items(items: Any, cls, fields: dict[str, type], where: str, key: str):
  if not isinstance(items, (list, tuple)):
    raise RecordError(f"{where}: field {key!r} is {_type_name(items)}, expected a list")
  out = []
  for i, item in enumerate(items):
    if isinstance(item, cls):
      item = dataclasses.asdict(item)
    if not isinstance(item, dict):
      raise RecordError(f"{where}: {key}[{i}] is {_type_name(item)}, expected a map")
    missing = [f for f in fields if f not in item]
    extra = sorted(set(item) - set(fields))
    if missing or extra:
      raise RecordError(f"{where}: {key}[{i}] has keys {sorted(item)}, expected {list(fields)}")
    values = {}
    for f, t in fields.items():
      v = item[f]
      if t is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
      if not isinstance(v, t) or isinstance(v, bool):
        raise RecordError(f"{where}: {key}[{i}].{f} is {_type_name(v)}, expected {t.__name__}")
      values[f] = v
    out.append(cls(**values))
  return tuple(out)


def _check_fields(fields: dict[str, Any], where: str) -> dict[str, Any]:
  """Type-checks a field mapping; returns it with candidates/qa as tuples of dataclasses."""
  for key in _REQUIRED:
    if key not in fields:
      raise RecordError(f"{where}: missing required field {key!r}")
  unknown = sorted(set(fields) - set(_ORDER))
  if unknown:
    raise RecordError(f"{where}: unknown fields {unknown}; known: {list(_ORDER)}")
  for key, t in _SCALARS.items():
    if key in fields and not isinstance(fields[key], t):
      raise RecordError(f"{where}: field {key!r} is {_type_name(fields[key])}, expected {t.__name__}")
  if not fields["image"]:
    raise RecordError(f"{where}: field 'image' is empty")
  status = fields.get("curation_status", "candidate")
  if status not in STATUSES:
    raise RecordError(f"{where}: curation_status {status!r} is not one of {list(STATUSES)}")
  out = dict(fields)
  out["candidates"] = _check_items(fields.get("candidates", ()), Candidate,
                                   {"entity_id": str, "name": str, "score": float}, where,
                                   "candidates")
  out["qa"] = _check_items(fields.get("qa", ()), QA, {"question": str, "answer": str}, where, "qa")
  return out


def encode(record: RewRecord) -> bytes:
  """The record's canonical bytes: same record, same bytes (fixed key order, float64)."""
  payload = {"schema_version": SCHEMA_VERSION}
  for key in _ORDER:
    value = getattr(record, key)
    if key == "candidates":
      value = [{"entity_id": c.entity_id, "name": c.name, "score": float(c.score)} for c in value]
    elif key == "qa":
      value = [{"question": q.question, "answer": q.answer} for q in value]
    payload[key] = value
  return msgpack.packb(payload, use_bin_type=True)


def decode(data: bytes, where: str = "record") -> RewRecord:
  """Parses canonical bytes; any problem is a RecordError that starts with `where`."""
  try:
    payload = msgpack.unpackb(data, raw=False, strict_map_key=True)
  except Exception as e:  # msgpack raises several unrelated types for bad bytes.
    raise RecordError(f"{where}: not a msgpack REW record ({type(e).__name__}: {e})") from None
  if not isinstance(payload, dict):
    raise RecordError(f"{where}: expected a msgpack map, got {_type_name(payload)}")
  version = payload.pop("schema_version", None)
  if version != SCHEMA_VERSION:
    raise RecordError(f"{where}: unknown schema_version {version!r} "
                      f"(this version of rew_jax reads version {SCHEMA_VERSION})")
  fields = _check_fields(payload, where)
  return _build(fields)


def _build(fields: dict[str, Any]) -> RewRecord:
  # Fields are already checked: skip __post_init__'s second pass.
  record = object.__new__(RewRecord)
  for key in _ORDER:
    default = RewRecord.__dataclass_fields__[key].default
    object.__setattr__(record, key, fields.get(key, default))
  return record


# --------------------------------------------------------------------------------------------
# Counted skips.
# --------------------------------------------------------------------------------------------


class SkipCounter:
  """Counts records skipped on purpose (bad input with skipping configured), by reason."""

  def __init__(self):
    self.by_reason: collections.Counter[str] = collections.Counter()
    self.examples: list[str] = []  # First few messages, for the report.

  def add(self, message: str, reason: str = "bad record") -> None:
    self.by_reason[reason] += 1
    if len(self.examples) < 5:
      self.examples.append(message)
    logging.warning("skipped %s: %s", reason, message)

  @property
  def total(self) -> int:
    return sum(self.by_reason.values())

  def summary(self) -> str:
    if not self.total:
      return "no records skipped"
    parts = ", ".join(f"{n} {r}" for r, n in sorted(self.by_reason.items()))
    return f"skipped {self.total} records ({parts}); first: {self.examples[0]}"


# --------------------------------------------------------------------------------------------
# Shards and the manifest.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ShardInfo:
  name: str
  count: int
  sha256: str
  bytes: int
  counts_by_status: dict[str, int]


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with storage.open_file(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def shard_name(index: int, prefix: str = "rew") -> str:
  return f"{prefix}-{index:05d}{SHARD_SUFFIX}"


def write_shard(path: str, records: Iterable[RewRecord]) -> ShardInfo:
  """Writes one shard atomically (temporary name, then rename) and describes it."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  counts = collections.Counter()
  # ArrayRecord writes local files only: a local file, renamed or uploaded once complete.
  with storage.local_output(path) as tmp:
    writer = array_record_module.ArrayRecordWriter(tmp, WRITER_OPTIONS)
    try:
      for record in records:
        writer.write(encode(record))
        counts[record.curation_status] += 1
    finally:
      writer.close()
    info = ShardInfo(name=os.path.basename(os.fspath(path)), count=sum(counts.values()),
                     sha256=_sha256(tmp), bytes=os.path.getsize(tmp),
                     counts_by_status=dict(sorted(counts.items())))
  return info


def config_hash(config: Any) -> str:
  """A short stable hash of a (Config)dict, stored in the manifest to tie data to its recipe."""
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  text = json.dumps(config, sort_keys=True, default=str, ensure_ascii=False)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Manifest:
  shards: tuple[ShardInfo, ...]
  source: str = ""
  curation_config_hash: str = ""
  schema_version: int = SCHEMA_VERSION

  @property
  def total(self) -> int:
    return sum(s.count for s in self.shards)

  @property
  def counts_by_status(self) -> dict[str, int]:
    counts = collections.Counter()
    for s in self.shards:
      counts.update(s.counts_by_status)
    return dict(sorted(counts.items()))

  def shard_paths(self, directory: str) -> list[str]:
    return [os.path.join(directory, s.name) for s in self.shards]

  def to_json(self) -> dict[str, Any]:
    return {"format": FORMAT, "schema_version": self.schema_version, "source": self.source,
            "curation_config_hash": self.curation_config_hash, "total": self.total,
            "counts_by_status": self.counts_by_status,
            "shards": [dataclasses.asdict(s) for s in self.shards]}

  def save(self, directory: str) -> str:
    """Writes DIR/manifest.json atomically; returns its path."""
    path = os.path.join(directory, MANIFEST_NAME)
    return storage.write_text(path, json.dumps(self.to_json(), indent=1, ensure_ascii=False)
                              + "\n")

  @classmethod
  def load(cls, directory: str) -> "Manifest":
    path = os.path.join(directory, MANIFEST_NAME)
    if not storage.isfile(path):
      raise RecordError(f"{directory}: no {MANIFEST_NAME}; is this a REW records directory?")
    try:
      data = json.loads(storage.read_text(path))
      if data.get("format") != FORMAT:
        raise RecordError(f"{path}: format is {data.get('format')!r}, expected {FORMAT!r}")
      if data.get("schema_version") != SCHEMA_VERSION:
        raise RecordError(f"{path}: unknown schema_version {data.get('schema_version')!r} "
                          f"(this version of rew_jax reads version {SCHEMA_VERSION})")
      shards = tuple(ShardInfo(name=s["name"], count=int(s["count"]), sha256=s["sha256"],
                               bytes=int(s["bytes"]), counts_by_status=dict(s["counts_by_status"]))
                     for s in data["shards"])
      manifest = cls(shards=shards, source=data.get("source", ""),
                     curation_config_hash=data.get("curation_config_hash", ""))
    except (ValueError, KeyError, TypeError) as e:
      raise RecordError(f"{path}: malformed manifest ({type(e).__name__}: {e})") from None
    if data.get("total") != manifest.total:
      raise RecordError(f"{path}: total {data.get('total')} != sum of shard counts {manifest.total}")
    return manifest

  def verify(self, directory: str, check_hashes: bool = True) -> None:
    """Checks that every shard exists with the recorded size, count and (optionally) sha256."""
    for shard in self.shards:
      path = os.path.join(directory, shard.name)
      if not storage.isfile(path):
        raise RecordError(f"shard {path}: listed in the manifest but missing")
      size = storage.getsize(path)
      if size != shard.bytes:
        raise RecordError(f"shard {path}: {size} bytes on disk, manifest says {shard.bytes} "
                          "(truncated or rewritten)")
      if check_hashes and _sha256(path) != shard.sha256:
        raise RecordError(f"shard {path}: sha256 differs from the manifest")
      reader = _open_shard(path)
      count = reader.num_records()
      reader.close()
      if count != shard.count:
        raise RecordError(f"shard {path}: holds {count} records, manifest says {shard.count}")


def describe_shards(directory: str, names: Sequence[str], **manifest_fields) -> Manifest:
  """Builds a manifest for shards already on disk (e.g. written by resumable workers)."""
  infos = []
  for name in names:
    path = os.path.join(directory, name)
    counts = collections.Counter(r.curation_status for r in _read_shard(path, on_error="raise"))
    infos.append(ShardInfo(name=name, count=sum(counts.values()), sha256=_sha256(path),
                           bytes=storage.getsize(path),
                           counts_by_status=dict(sorted(counts.items()))))
  return Manifest(shards=tuple(infos), **manifest_fields)


class ShardWriter:
  """Writes records into numbered shards and, on close, the manifest.

      with ShardWriter(out_dir, records_per_shard=1000, source="webli") as w:
        for r in records: w.write(r)

  An exception inside the `with` block leaves no manifest (the directory is then not a
  valid records directory) and no partial shard.
  """

  def __init__(self, directory: str, *, records_per_shard: int = 1000, prefix: str = "rew",
               source: str = "", curation_config_hash: str = ""):
    if records_per_shard < 1:
      raise ValueError("records_per_shard must be >= 1")
    storage.makedirs(directory)
    self.directory = directory
    self.records_per_shard = records_per_shard
    self.prefix = prefix
    self.source = source
    self.curation_config_hash = curation_config_hash
    self._pending: list[RewRecord] = []
    self._shards: list[ShardInfo] = []
    self.manifest: Manifest | None = None

  def write(self, record: RewRecord) -> None:
    self._pending.append(record)
    if len(self._pending) >= self.records_per_shard:
      self._flush()

  def _flush(self) -> None:
    if not self._pending:
      return
    path = os.path.join(self.directory, shard_name(len(self._shards), self.prefix))
    self._shards.append(write_shard(path, self._pending))
    self._pending = []

  def close(self) -> Manifest:
    self._flush()
    self.manifest = Manifest(shards=tuple(self._shards), source=self.source,
                             curation_config_hash=self.curation_config_hash)
    self.manifest.save(self.directory)
    return self.manifest

  def __enter__(self) -> "ShardWriter":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()


def write_records(directory: str, records: Iterable[RewRecord], **kwargs) -> Manifest:
  """Writes all `records` into shards under `directory`; returns the manifest."""
  with ShardWriter(directory, **kwargs) as writer:
    for record in records:
      writer.write(record)
  return writer.manifest


# --------------------------------------------------------------------------------------------
# Reading.
# --------------------------------------------------------------------------------------------


def _open_shard(path: str):
  """An ArrayRecordReader, or a RecordError naming the shard when it is corrupt or truncated."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  try:
    # ArrayRecord opens local files only: a remote shard is read from a cached local copy.
    reader = array_record_module.ArrayRecordReader(storage.local_input(path))
  except RuntimeError as e:
    raise RecordError(f"shard {path}: unreadable ArrayRecord file ({e})") from None
  # A truncated file opens "successfully" with zero records and a failed status.
  if not reader.ok():
    raise RecordError(f"shard {path}: unreadable ArrayRecord file (corrupt or truncated)")
  return reader


def _read_shard(path: str, on_error: str = "raise",
                skipped: SkipCounter | None = None) -> Iterator[RewRecord]:
  reader = _open_shard(path)
  n = reader.num_records()
  try:
    for i in range(n):
      try:
        data = reader.read([i])[0]
      except RuntimeError as e:
        raise RecordError(f"shard {path} record {i}: unreadable ({e})") from None
      try:
        yield decode(data, where=f"shard {path} record {i}")
      except RecordError as e:
        if on_error != "skip":
          raise
        (skipped or SkipCounter()).add(str(e))
  finally:
    reader.close()


def read_records(directory: str, *, verify: bool = True, check_hashes: bool = False,
                 on_error: str = "raise", skipped: SkipCounter | None = None
                 ) -> Iterator[RewRecord]:
  """Yields every record of a records directory in shard order.

  `on_error="skip"` counts undecodable records in `skipped` instead of raising; shard-level
  problems (missing, truncated, count or hash mismatch) always raise.
  """
  if on_error not in ("raise", "skip"):
    raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
  manifest = Manifest.load(directory)
  if verify:
    manifest.verify(directory, check_hashes=check_hashes)
  for path in manifest.shard_paths(directory):
    yield from _read_shard(path, on_error, skipped)


class RecordSource:
  """Random access to the raw record bytes of a records directory (a Grain data source).

  `source[i]` is the canonical bytes of record i (shards in manifest order); `where(i)`
  names its shard and index for error messages. Picklable, so Grain workers can hold it.
  """

  def __init__(self, directory: str, *, verify: bool = True, check_hashes: bool = False):
    import grain  # pylint: disable=g-import-not-at-top
    self.directory = directory
    self.manifest = Manifest.load(directory)
    if verify:
      self.manifest.verify(directory, check_hashes=check_hashes)
    if not self.manifest.total:
      raise RecordError(f"{directory}: the manifest lists no records")
    self._names = [s.name for s in self.manifest.shards if s.count]
    self._starts = []
    start = 0
    for s in self.manifest.shards:
      if s.count:
        self._starts.append(start)
        start += s.count
    # ArrayRecord opens local files only: remote shards are read from cached local copies
    # (fetched here, once per machine; `verify` above checked the remote sizes).
    paths = [storage.local_input(os.path.join(directory, n)) for n in self._names]
    try:
      self._source = grain.sources.ArrayRecordDataSource(paths)
    except RuntimeError as e:
      raise RecordError(f"{directory}: cannot open shards ({e})") from None
    if len(self._source) != self.manifest.total:
      raise RecordError(f"{directory}: shards hold {len(self._source)} records, "
                        f"manifest says {self.manifest.total}")

  def __len__(self) -> int:
    return self.manifest.total

  def __getitem__(self, index: int) -> bytes:
    try:
      return self._source[index]
    except RuntimeError as e:
      raise RecordError(f"{self.where(index)}: unreadable ({e})") from None

  def where(self, index: int) -> str:
    import bisect  # pylint: disable=g-import-not-at-top
    k = bisect.bisect_right(self._starts, index) - 1
    return f"shard {os.path.join(self.directory, self._names[k])} record {index - self._starts[k]}"

  def __repr__(self) -> str:
    return f"RecordSource({self.directory!r}, {len(self)} records)"


# --------------------------------------------------------------------------------------------
# CLI: records inspect DIR.
# --------------------------------------------------------------------------------------------


def _short(text: str, n: int = 80) -> str:
  text = text.replace("\n", " ")
  return text if len(text) <= n else text[:n - 1] + "…"


def inspect_directory(directory: str, samples: int = 3, check_hashes: bool = False) -> str:
  """A human-readable summary: manifest, counts per status, a few decoded samples."""
  manifest = Manifest.load(directory)
  manifest.verify(directory, check_hashes=check_hashes)
  lines = [f"{directory}: {manifest.total} records in {len(manifest.shards)} shards "
           f"(schema v{manifest.schema_version}, source {manifest.source or '-'}, "
           f"curation config {manifest.curation_config_hash or '-'})"]
  lines.append("by curation_status:")
  for status, n in manifest.counts_by_status.items():
    lines.append(f"  {status:<11} {n:>8}  {100 * n / max(manifest.total, 1):5.1f}%")
  skipped = SkipCounter()
  records = read_records(directory, verify=False, on_error="skip", skipped=skipped)
  with_rationale = with_qa = 0
  shown = []
  for record in records:
    with_rationale += bool(record.rationale)
    with_qa += bool(record.qa)
    if len(shown) < samples:
      shown.append(record)
  lines.append(f"with rationale: {with_rationale}, with QA: {with_qa}; {skipped.summary()}")
  for r in shown:
    lines.append(f"- {r.image_id} [{r.curation_status}, {r.backend or '-'}] "
                 f"{r.entity_id} {r.entity_name!r} ({len(r.image)} image bytes)")
    lines.append(f"    caption:   {_short(r.caption)!r}")
    if r.candidates:
      lines.append("    candidates: " + ", ".join(
          f"{c.entity_id} {c.name!r} {c.score:.3f}" for c in r.candidates[:3]))
    if r.rationale:
      lines.append(f"    rationale: {_short(r.rationale)!r}")
    for qa in r.qa[:2]:
      lines.append(f"    qa: {_short(qa.question, 40)!r} → {_short(qa.answer, 40)!r}")
  return "\n".join(lines)
