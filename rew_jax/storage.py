"""Where bytes live: local disk or an object store (`gs://`), through one API (`etils.epath`).

Every path a user may point at a bucket (workdirs, checkpoints, records, metrics, evaluator
outputs, OVEN files and images) is read and written through this module or `epath.Path`
directly, never `os.path`: `os.path.abspath("gs://b/run")` is "<cwd>/gs:/b/run", a local
folder that would silently take a run's outputs. The KB index (memory-mapped tables) is
worked on in a local `Mirror` of its bucket directory; code that opens local files only (a
memory-mapped KB index) refuses a remote path by name (`require_local`) instead.

    storage.is_remote("gs://b/run")             # True: no directories, no renames, no appends
    storage.absolute("run")                     # "/cwd/run"; a gs:// path is returned as is
    storage.write_text(path, text)              # whole and atomic on both kinds
    with storage.local_output(path) as tmp:     # a writer that only knows local files
      write_array_record(tmp)                   # → path, on success only
    storage.local_input(path)                   # a local copy of a remote file (cached)
    mirror = storage.Mirror("gs://b/kb", tag="process0")  # a local working copy of a folder
    mirror.pull(); build_or_open(mirror.local); mirror.push()

Object-store semantics decide three things here: an object upload is atomic (readers see
the old object or the new one), so remote writes go straight to their name, whereas local
ones go through a temporary name and a rename; objects cannot be appended to, so callers
that append (metrics) rewrite the object; and libraries that open files by path themselves
(ArrayRecord's reader and writer) get a local file staged by `local_input`/`local_output`.

Faults on the way (503s, 429s, resets, stalls) are retried by each client's own policy,
configured in one place here (`RetryPolicy`, from $REW_JAX_STORAGE_RETRIES or
`configure_retries`); a request that still fails raises `StorageError` naming the object.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.abc
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from typing import Callable, Iterator
import warnings

from etils import epath
import fsspec.config

from rew_jax.errors import UserError

# Where remote files that a library can only open locally are copied (ArrayRecord shards).
CACHE_ENV = "REW_JAX_CACHE_DIR"

# Processes read what others write (hosts, a resumed run, an evaluator of a running job): a
# directory listing cached by gcsfs would hide their new objects, e.g. a checkpoint step.
# fsspec applies these defaults when epath first makes its gcsfs instance.
for _protocol in ("gs", "gcs"):
  fsspec.config.conf.setdefault(_protocol, {}).setdefault("use_listings_cache", False)


# ---------------------------------------------------------------------------------------
# Retries: each client retries by its own policy; this section only sets that policy's
# options, for all of them at once. Nothing here retries anything itself.

RETRY_ENV = "REW_JAX_STORAGE_RETRIES"


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
  """The options of the clients' own retry policies (defaults: tensorstore's, plus a read
  timeout that neither gcsfs nor tensorstore has by default, where a stalled reply hangs).

  Who reads what:
  - tensorstore, i.e. orbax's checkpoint arrays and OCDBT manifests: the context resources
    `gcs_request_retries` {max_retries, initial_delay_s, max_delay_s} (exponential backoff;
    429, 408, 5xx and dropped connections are retried) and `gcs_request_concurrency`
    {concurrency}, added to the context orbax builds; `read_timeout_s` as curl's low-speed
    abort (TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS, < 1 byte/s), an aborted request being
    retried (curl averages speed over its last 5 s: a stall after a transfer is cut about
    6 s + read_timeout_s in). tensorstore reads that variable once per process, at its
    first request, so it is set when this module is imported, and `configure_retries`
    cannot change it; one set by hand wins, unless $REW_JAX_STORAGE_RETRIES names
    read_timeout_s.
  - gcsfs (epath: every other gs:// read and write, orbax's metadata files included):
    `read_timeout_s` as its `requests_timeout` (aiohttp's connect and between-reads
    timeouts; a timed-out request is retried). Its retries are gcsfs's fixed policy: 6
    attempts, 1, 2, 4, 8 and 16 s apart (+ up to 1 s jitter), on 408, 429, 5xx and
    connection errors; gcsfs binds them when it is imported and offers no option for them.
  - google-cloud-storage: orbax's one bucket lookup per process (is it a hierarchical-
    namespace bucket?) runs with that library's DEFAULT_RETRY (1 s doubling to 60 s, for
    120 s), which orbax passes no option for.

  Change them with REW_JAX_STORAGE_RETRIES="max_retries=8,read_timeout_s=30" (read when
  rew_jax.storage is imported) or `storage.configure_retries(max_retries=8)`.
  """
  max_retries: int = 32
  initial_delay_s: float = 1.0
  max_delay_s: float = 32.0
  concurrency: int = 32
  read_timeout_s: float = 60.0

  def tensorstore_context(self) -> dict:
    """The tensorstore context resources (JSON) of this policy."""
    return {"gcs_request_retries": {"max_retries": self.max_retries,
                                    "initial_delay": f"{self.initial_delay_s:g}s",
                                    "max_delay": f"{self.max_delay_s:g}s"},
            "gcs_request_concurrency": {"limit": self.concurrency}}


def parse_retry_policy(text: str, base: RetryPolicy = RetryPolicy()) -> RetryPolicy:
  """`base` with the "key=value,key=value" changes of `text` (the form of $RETRY_ENV)."""
  fields = {f.name: f.type for f in dataclasses.fields(RetryPolicy)}
  changes = {}
  for item in filter(None, (part.strip() for part in text.split(","))):
    key, _, value = item.partition("=")
    key = key.strip()
    if key not in fields:
      raise UserError(f"{RETRY_ENV}: unknown key {key!r} in {text!r}; known keys: "
                      f"{', '.join(fields)}")
    try:
      changes[key] = (int if fields[key] in (int, "int") else float)(value)
    except ValueError:
      raise UserError(f"{RETRY_ENV}: {key}={value!r} is not a number") from None
  return dataclasses.replace(base, **changes)


_policy = parse_retry_policy(os.environ.get(RETRY_ENV, ""))


def retry_policy() -> RetryPolicy:
  return _policy


def configure_retries(policy: RetryPolicy | None = None, **changes) -> RetryPolicy:
  """Makes `policy` (or the current one with `changes`) the clients' retry options from now
  on: in gcsfs instances already made too, in orbax for its next checkpoint operation."""
  global _policy
  _policy = dataclasses.replace(policy or _policy, **changes)
  for module, configure in _CLIENTS.items():
    if module in sys.modules:
      configure(sys.modules[module])
  return _policy


def _configure_gcsfs(gcsfs) -> None:
  import aiohttp  # pylint: disable=g-import-not-at-top  # Loaded with gcsfs.
  timeout = aiohttp.ClientTimeout(total=None, sock_connect=_policy.read_timeout_s,
                                  sock_read=_policy.read_timeout_s)
  for protocol in ("gs", "gcs"):
    fsspec.config.conf.setdefault(protocol, {})["requests_timeout"] = timeout
  # fsspec's instance cache: epath keeps the instance it made first for the process.
  for fs in list(gcsfs.GCSFileSystem._cache.values()):  # pylint: disable=protected-access
    fs.requests_timeout = timeout


def _configure_orbax(ts_utils) -> None:
  # orbax 0.12 builds every TensorStore context from these dicts and offers no option for
  # them; tests/test_gcs_faults.py checks that its contexts carry the policy.
  names = ("_BASE_TS_CONTEXT", "_DEFAULT_OCDBT_TS_CONTEXT")
  if not all(isinstance(getattr(ts_utils, n, None), dict) for n in names):
    warnings.warn(f"{ts_utils.__name__} has no {' or '.join(names)}: checkpoints use "
                  "tensorstore's default retries, not rew_jax.storage.RetryPolicy")
    return
  for name in names:
    getattr(ts_utils, name).update(_policy.tensorstore_context())


def _configure_tensorstore_env(explicit: bool) -> None:
  # An explicit read_timeout_s beats the value a parent process set (and passed down).
  seconds = str(max(1, round(_policy.read_timeout_s)))
  if explicit:
    os.environ["TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS"] = seconds
  os.environ.setdefault("TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS", seconds)
  os.environ.setdefault("TENSORSTORE_CURL_LOW_SPEED_LIMIT_BYTES", "1")


_CLIENTS: dict[str, Callable] = {
    "gcsfs": _configure_gcsfs,
    "orbax.checkpoint._src.serialization.tensorstore_utils": _configure_orbax,
}


class _WhenImported(importlib.abc.MetaPathFinder):
  """Runs `configure(module)` as soon as `name` has been imported, by whoever imports it:
  rew_jax configures the clients without importing them (orbax alone takes over 1 s)."""

  def __init__(self, name: str, configure: Callable):
    self.name, self.configure = name, configure

  def find_spec(self, fullname, path=None, target=None):
    if fullname != self.name:
      return None
    sys.meta_path.remove(self)
    spec = importlib.util.find_spec(fullname)
    if spec is None or spec.loader is None:
      return spec
    exec_module = spec.loader.exec_module

    def exec_and_configure(module):
      exec_module(module)
      self.configure(module)

    spec.loader.exec_module = exec_and_configure
    return spec


_configure_tensorstore_env(explicit="read_timeout_s" in os.environ.get(RETRY_ENV, ""))
for _module, _configure in _CLIENTS.items():
  if _module in sys.modules:
    _configure(sys.modules[_module])
  else:
    sys.meta_path.insert(0, _WhenImported(_module, _configure))


# ---------------------------------------------------------------------------------------
# Errors: a request that failed after its client's retries names its object.

class StorageError(Exception):
  """A storage request that failed after the client's retries; the message names the object.

  Not an OSError on purpose: callers take an OSError for a file that is missing or bad and
  say so ("cannot read image", "rebuild it"), which a store that did not answer is not."""


# The clients' transport errors: gcsfs (HttpError, ChecksumError), aiohttp, requests and
# google-auth; their messages name no object ("Service Unavailable, 503").
_CLIENT_MODULES = ("gcsfs.", "aiohttp.", "requests.", "google.auth.", "google.api_core.")


def _is_transport_failure(error: BaseException) -> bool:
  if isinstance(error, (FileNotFoundError, FileExistsError, PermissionError)):
    return False  # Answers, not failures; they carry the path.
  if isinstance(error, (TimeoutError, ConnectionError)):
    return True
  return any(f"{c.__module__}.".startswith(_CLIENT_MODULES) for c in type(error).__mro__)


@contextlib.contextmanager
def naming(p) -> Iterator[None]:
  """Re-raises a client's transport failure inside the block as StorageError naming `p`."""
  try:
    yield
  except StorageError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # Filtered just below.
    if not (is_remote(p) and _is_transport_failure(e)):
      raise
    raise StorageError(f"{os.fspath(p)}: {type(e).__name__}: {e}") from e


def _names_its_path(fn):
  @functools.wraps(fn)
  def wrapper(p, *args, **kwargs):
    with naming(p):
      return fn(p, *args, **kwargs)
  return wrapper


@contextlib.contextmanager
def open_file(p, mode: str = "r", **kwargs) -> Iterator:
  """`epath.Path(p).open(...)` whose transport failures, while opening or reading, raise
  StorageError naming `p` (a stream's read may be the request that fails)."""
  with naming(p), epath.Path(p).open(mode, **kwargs) as f:
    yield f


def is_remote(path) -> bool:
  """True for object-store URLs (gs://, s3://): paths that never touch the local disk."""
  return "://" in os.fspath(path)


def absolute(path) -> str:
  """`path` made absolute when local; a remote URL unchanged (os.path would mangle it)."""
  path = os.fspath(path)
  return path if is_remote(path) else os.path.abspath(path)


class LocalOnlyError(UserError):
  """A remote path given where rew_jax reads or writes only local files (for now)."""


def require_local(p, what: str) -> None:
  """Refuses a remote `p` for `what`, rather than let os.path make a local "gs:" folder."""
  if p and is_remote(p):
    raise LocalOnlyError(f"{what} {os.fspath(p)!r}: this step writes local files only (memory-"
                         "mapped tables, appended journals); give it a local or mounted path "
                         "(records and training workdirs may be gs://)")


def path(p) -> epath.Path:
  return epath.Path(p)


@_names_its_path
def exists(p) -> bool:
  return epath.Path(p).exists()


@_names_its_path
def isfile(p) -> bool:
  p = epath.Path(p)
  return p.exists() and not p.is_dir()


@_names_its_path
def isdir(p) -> bool:
  return epath.Path(p).is_dir()


@_names_its_path
def getsize(p) -> int:
  return epath.Path(p).stat().length


def makedirs(p) -> None:
  """Creates a local directory; a no-op on object stores, which have no directories."""
  epath.Path(p).mkdir(parents=True, exist_ok=True)


@_names_its_path
def listdir(p) -> list[str]:
  """Names (not paths) in a directory, sorted."""
  return sorted(child.name for child in epath.Path(p).iterdir())


@_names_its_path
def glob(directory, pattern: str) -> list[str]:
  """Paths in `directory` whose names match `pattern`, sorted."""
  return sorted(os.fspath(c) for c in epath.Path(directory).glob(pattern))


@_names_its_path
def remove(p) -> None:
  epath.Path(p).unlink()


@_names_its_path
def rmtree(p) -> None:
  """Removes a directory tree; nothing when it does not exist."""
  p = epath.Path(p)
  if p.exists():
    p.rmtree()


@_names_its_path
def read_text(p) -> str:
  return epath.Path(p).read_text(encoding="utf-8")


@_names_its_path
def read_bytes(p) -> bytes:
  return epath.Path(p).read_bytes()


@_names_its_path
def write_bytes(p, data: bytes) -> str:
  """Writes `data` to `p` whole: readers never see a part of it."""
  p = os.fspath(p)
  if is_remote(p):  # One object upload is atomic; a rename would be a copy plus a delete.
    epath.Path(p).write_bytes(data)
    return p
  directory, name = os.path.split(p)
  tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}")
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, p)
  return p


def write_text(p, text: str) -> str:
  return write_bytes(p, text.encode("utf-8"))


@contextlib.contextmanager
def local_output(p) -> Iterator[str]:
  """A local file path for a writer that cannot write `p` itself; on success it becomes `p`.

  Local `p`: a temporary name beside it, renamed at the end (so a crash leaves no file under
  the final name). Remote `p`: a file in a local temporary folder, uploaded at the end.
  Nothing is left behind when the block raises.
  """
  p = os.fspath(p)
  if is_remote(p):
    folder = tempfile.mkdtemp(prefix="rew_jax_upload_")
    tmp = os.path.join(folder, os.path.basename(p))
    try:
      yield tmp
      with naming(p):
        epath.Path(tmp).copy(p, overwrite=True)
    finally:
      shutil.rmtree(folder, ignore_errors=True)
    return
  directory, name = os.path.split(p)
  tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}")
  try:
    yield tmp
    os.replace(tmp, p)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def cache_dir() -> str:
  """Local folder for copies of remote files: $REW_JAX_CACHE_DIR, else ~/.cache/rew_jax."""
  return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "rew_jax")


@_names_its_path
def local_input(p) -> str:
  """A local path holding the bytes of `p`: `p` itself when local, else a cached copy.

  The copy is named by the remote path, size and modification time, so a rewritten object
  is fetched again and an unchanged one is fetched once per machine; it is written under a
  temporary name and renamed, so concurrent readers (Grain workers) never see half a file.
  """
  p = os.fspath(p)
  if not is_remote(p):
    return p
  stat = epath.Path(p).stat()
  key = hashlib.sha256(f"{p}|{stat.length}|{stat.mtime}".encode()).hexdigest()[:16]
  local = os.path.join(cache_dir(), "remote", f"{key}-{os.path.basename(p)}")
  if os.path.isfile(local) and os.path.getsize(local) == stat.length:
    return local
  os.makedirs(os.path.dirname(local), exist_ok=True)
  tmp = f"{local}.tmp-{os.getpid()}"
  try:
    epath.Path(p).copy(tmp, overwrite=True)
    os.replace(tmp, local)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return local


class Mirror:
  """A local working copy of a directory that may be remote, for code that needs local files.

  The KB index is a set of memory-mapped tables, and its builders (index, embeddings, BM25,
  codes) write local files. With a remote directory they work on `local`, a folder in the
  cache named by the remote path and `tag` (one per process, as each host has its own
  disk), and the caller moves the changes across: `pull()` fetches what changed remotely,
  `push()` uploads what changed locally and deletes remotely what was deleted locally. For a
  local directory `local` is the directory itself and both are no-ops.

  Changes are told apart by the (size, mtime) each file had at the last sync, kept in
  `local/.mirror.json`. A push uploads the files named in `last` (e.g. an index's meta.json,
  whose presence marks the index complete) after all others, and removes them first when they
  changed, so a reader never sees the marker beside half-uploaded tables.
  """

  STATE = ".mirror.json"

  def __init__(self, remote, *, tag: str = "", last: tuple[str, ...] = ("meta.json",)):
    self.remote = os.fspath(remote).rstrip("/")
    self.last = last
    if not is_remote(self.remote):
      self.local = self.remote
      return
    key = hashlib.sha256(f"{self.remote}|{tag}".encode()).hexdigest()[:16]
    self.local = os.path.join(cache_dir(), "mirror", f"{key}-{os.path.basename(self.remote)}")
    os.makedirs(self.local, exist_ok=True)

  @property
  def active(self) -> bool:
    return self.local != self.remote

  def _state(self) -> dict:
    try:
      with open(os.path.join(self.local, self.STATE)) as f:
        return json.load(f)
    except FileNotFoundError:
      return {}

  def _save(self, state: dict) -> None:
    write_text(os.path.join(self.local, self.STATE), json.dumps(state, sort_keys=True))

  def _local_files(self) -> dict[str, list[int]]:
    out = {}
    for root, _, files in os.walk(self.local):
      for name in files:
        full = os.path.join(root, name)
        rel = os.path.relpath(full, self.local)
        if rel != self.STATE and ".tmp" not in name:
          st = os.stat(full)
          out[rel] = [st.st_size, st.st_mtime_ns]
    return out

  def _remote_files(self) -> dict[str, list[float]]:
    with naming(self.remote):
      return self._walk_remote()

  def _walk_remote(self) -> dict[str, list[float]]:
    root = epath.Path(self.remote)
    if not root.exists():
      return {}
    out, folders = {}, [root]
    while folders:  # A walk by listings: epath has no recursive glob for buckets.
      for p in folders.pop().iterdir():
        if p.is_dir():
          folders.append(p)
        else:
          st = p.stat()
          out[os.path.relpath(os.fspath(p), self.remote)] = [st.length, st.mtime]
    return out

  def pull(self) -> int:
    """Fetches remote files that are new or changed since the last sync; returns how many."""
    if not self.active:
      return 0
    state, local, fetched = self._state(), self._local_files(), 0
    remote = self._remote_files()
    for rel, stat in sorted(remote.items()):
      known = state.get(rel, {})
      if known.get("remote") == stat and known.get("local") == local.get(rel):
        continue
      dest = os.path.join(self.local, rel)
      os.makedirs(os.path.dirname(dest), exist_ok=True)
      with local_output(dest) as tmp, naming(f"{self.remote}/{rel}"):
        epath.Path(self.remote, rel).copy(tmp, overwrite=True)
      st = os.stat(dest)
      state[rel] = {"remote": stat, "local": [st.st_size, st.st_mtime_ns]}
      fetched += 1
    for rel in set(state) - set(remote):  # Deleted remotely since: delete here too.
      if rel in local:
        os.remove(os.path.join(self.local, rel))
      del state[rel]
    self._save(state)
    return fetched

  def push(self) -> int:
    """Uploads local files that are new or changed since the last sync, and deletes remote
    files deleted locally; returns how many files it uploaded."""
    if not self.active:
      return 0
    state, local = self._state(), self._local_files()
    changed = sorted(rel for rel, stat in local.items() if state.get(rel, {}).get("local") != stat)
    gone = sorted(set(state) - set(local))
    markers = [rel for rel in changed + gone if os.path.basename(rel) in self.last]
    for rel in markers + [r for r in gone if r not in markers]:
      if exists(f"{self.remote}/{rel}"):
        remove(f"{self.remote}/{rel}")
      if rel in gone:
        del state[rel]
    ordered = [r for r in changed if r not in markers] + [r for r in changed if r in markers]
    for rel in ordered:
      target = epath.Path(self.remote, rel)
      with naming(target):
        epath.Path(self.local, rel).copy(target, overwrite=True)
        stat = target.stat()
      state[rel] = {"remote": [stat.length, stat.mtime], "local": local[rel]}
    self._save(state)
    return len(ordered)
