"""Storage faults on the way to the GCS emulator: 503s, 429s, dropped connections, stalls.

A proxy (tests/gcs_fault_proxy.py) sits between the clients and the emulator. Through it, a
curation run with a gs:// workdir, an orbax checkpoint save and restore, and a training read
of gs:// records give what they give without faults: no record lost or doubled, equal
params, the same bytes. The retries are the clients' own (gcsfs, tensorstore,
google-cloud-storage), configured by rew_jax.storage.RetryPolicy. A fault that outlasts them
ends, within a bounded time, in an error naming the object. Each test asserts that the proxy
really injected its faults, and into which client.
"""

import json
import io
import os
import re
import subprocess
import sys
import time

import fsspec
import numpy as np
import pytest

from rew_jax import records
from rew_jax import storage
from rew_jax.errors import UserError

from gcs_fault_proxy import Fault, FaultProxy
from test_records import make_record

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "curation"))
import curationcase  # noqa: E402  # pylint: disable=wrong-import-position

# Small delays, so that a test's faults cost seconds; gcsfs's own backoff (1 s, then 2, 4, 8,
# 16 s: not an option of gcsfs) is the one cost that stays.
TEST_POLICY = dict(max_retries=4, initial_delay_s=0.05, max_delay_s=0.2, read_timeout_s=1.5)
BUCKET_LOOKUP = r"^/storage/v1/b/[^/?]+\?"  # orbax's one google-cloud-storage request.
NUM_IMAGES = 24


def _forget_bucket_clients() -> None:
  # orbax keeps one google-cloud-storage bucket per process (lru_cache), bound to the
  # endpoint of its day: it must not outlive the proxy.
  gcs_utils = sys.modules.get("orbax.checkpoint._src.path.gcs_utils")
  if gcs_utils is not None:
    gcs_utils.get_bucket.cache_clear()


@pytest.fixture(scope="module")
def proxy(gcs):
  """The session's emulator behind a fault proxy, the clients pointed at the proxy."""
  policy = storage.retry_policy()
  with FaultProxy(gcs.port) as fault_proxy, pytest.MonkeyPatch.context() as mp:
    for key, value in gcs.env_via(fault_proxy.url).items():
      mp.setenv(key, value)
    _forget_bucket_clients()
    storage.configure_retries(**TEST_POLICY)
    yield fault_proxy
    storage.configure_retries(policy)
    _forget_bucket_clients()


@pytest.fixture
def faults(proxy):
  """The proxy, its rules and counts cleared before and after the test."""
  proxy.clear()
  yield proxy
  proxy.clear()


def _clients(proxy) -> set[tuple[str, str]]:
  return set(proxy.faults_by_client())


def _not_sent_again(proxy) -> list:
  """The faulted requests that their client did not send again: a stall waited out, not
  timed out, or a fault given up on."""
  key = lambda s: (s.method, re.sub(r"[?&]tensorstore=[0-9a-f]+", "", s.target))  # A nonce.
  log = proxy.log
  return [s for i, s in enumerate(log)
          if s.outcome != "ok" and not any(key(t) == key(s) for t in log[i + 1:])]


# ---------------------------------------------------------------------------------------
# Policy: where each client reads it.

def test_the_policy_reaches_each_clients_own_options(proxy):
  from orbax.checkpoint._src.serialization import tensorstore_utils  # pylint: disable=g-import-not-at-top
  gcsfs_instance = fsspec.filesystem("gcs", finalize_on_close=True)  # epath's instance.
  assert gcsfs_instance.requests_timeout.sock_read == TEST_POLICY["read_timeout_s"]
  for ocdbt in (True, False):
    context = tensorstore_utils.get_ts_context(use_ocdbt=ocdbt).spec.to_json()
    assert context["gcs_request_retries"]["max_retries"] == TEST_POLICY["max_retries"]
  assert storage.parse_retry_policy("max_retries=2, read_timeout_s=0.5") == storage.RetryPolicy(
      max_retries=2, read_timeout_s=0.5)
  with pytest.raises(UserError, match=r"unknown key 'retries'.*known keys: max_retries"):
    storage.parse_retry_policy("retries=2")


def test_a_transport_failure_is_a_storage_error_naming_the_object(monkeypatch):
  """Not an OSError, which callers take for a missing or bad file; answers such as a
  FileNotFoundError pass unchanged."""
  import aiohttp  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top
  gs_path = type(epath.Path("gs://b/x"))

  def reset(self):
    raise aiohttp.ClientOSError(104, "Connection reset by peer")

  monkeypatch.setattr(gs_path, "read_bytes", reset)
  with pytest.raises(storage.StorageError,
                     match=r"^gs://b/images/a\.jpg: ClientOSError: .*reset by peer") as e:
    storage.read_bytes("gs://b/images/a.jpg")
  assert not isinstance(e.value, OSError)
  assert isinstance(e.value.__cause__, aiohttp.ClientOSError)

  def missing(self):
    raise FileNotFoundError(os.fspath(self))

  monkeypatch.setattr(gs_path, "read_bytes", missing)
  with pytest.raises(FileNotFoundError):
    storage.read_bytes("gs://b/images/a.jpg")

  # A stream read (a KB file, a candidates shard) that fails midway names its object too.
  class CutOff(io.RawIOBase):
    def readable(self):
      return True

    def readinto(self, b):
      raise aiohttp.ClientPayloadError("Response payload is not completed")

  monkeypatch.setattr(gs_path, "open", lambda self, mode="r", **kw: io.BufferedReader(CutOff()))
  with pytest.raises(storage.StorageError, match=r"^gs://b/kb\.jsonl: ClientPayloadError"):
    with storage.open_file("gs://b/kb.jsonl", "rb") as f:
      f.read()


# ---------------------------------------------------------------------------------------
# (a) A curation run with a gs:// workdir.

@pytest.fixture(scope="module")
def curation_case(proxy, gcs, tmp_path_factory):
  """A world, its fault-free curation on local disk, and its inputs in the bucket."""
  root = tmp_path_factory.mktemp("faults_curation")
  # Half the curation tests' world: the run's time is mostly its requests.
  world = curationcase.build_world(
      str(root / "world"), curationcase.world_config(num_web_images=NUM_IMAGES), per_shard=8)
  local = curationcase.link_inputs(world, root / "local")
  from rew_jax.curation import inputs, run  # pylint: disable=g-import-not-at-top
  local_report = run.curate(curationcase.curate_config(), local, verbose=False)
  bucket = gcs.url("faults/curate")
  objects = {}
  kb = os.path.join(world, "kb")
  for d, _, files in os.walk(kb):
    for f in files:
      with open(os.path.join(d, f), "rb") as fh:
        objects[f"{bucket}/kb/{os.path.relpath(os.path.join(d, f), kb)}"] = fh.read()
  for shard in inputs.candidate_shards(os.path.join(world, "candidates")):
    rows = [json.loads(line) for line in open(shard)]
    for row in rows:
      name = f"{bucket}/images/{row['image_id']}.jpg"
      with open(row["image_path"], "rb") as fh:
        objects[name] = fh.read()
      row["image_path"] = name
    objects[f"{bucket}/W/candidates/{os.path.basename(shard)}"] = "".join(
        json.dumps(r) + "\n" for r in rows).encode()
  fsspec.filesystem("gcs", finalize_on_close=True).pipe(objects)  # Concurrent uploads.
  return {"world": world, "local": local, "local_report": local_report, "bucket": bucket}


def _curate_config(case):
  config = curationcase.curate_config()
  config.curation.kb_index_dir = f"{case['bucket']}/kb"
  world = os.path.join(case["world"], "world")
  config.curation.kb_source = os.path.join(world, "kb", "Wiki6M_ver_1_0.jsonl.gz")
  config.curation.truth_path = os.path.join(world, "truth", "web_truth.jsonl")
  return config


def test_a_curation_run_through_faults_equals_the_fault_free_run(curation_case, faults,
                                                                 tmp_path, monkeypatch):
  from rew_jax.curation import run  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "cache"))
  case, work = curation_case, f"{curation_case['bucket']}/W"
  faults.add(
      Fault("status", status=503, times=2, every=9),
      Fault("status", status=429, times=2, every=11),
      Fault("reset", times=1, every=13),                     # Never reached the store.
      # An upload session opened, its reply lost. (Not its last chunk's reply: gcsfs then
      # sends that chunk again, and the emulator answers 404 where GCS returns the object.)
      Fault("reset", times=1, method="POST", path=r"uploadType=resumable$", forward=True),
      Fault("stall", times=1, stall_s=2.5, path="/download/"))  # Past gcsfs's read timeout.
  report = run.curate(_curate_config(case), work, verbose=False)
  assert faults.injected == {"503": 2, "429": 2, "reset": 2, "stall": 1}, faults.injected
  assert not _not_sent_again(faults)
  faults.clear()
  encoded = [records.encode(r) for r in records.read_records(f"{work}/records",
                                                             check_hashes=True)]
  local = [records.encode(r) for r in records.read_records(
      os.path.join(case["local"], "records"), check_hashes=True)]
  assert encoded == local
  ids = [records.decode(e).image_id for e in encoded]
  assert len(ids) == len(set(ids)) == NUM_IMAGES
  with open(os.path.join(case["local"], "records", "manifest.json")) as f:
    local_manifest = json.load(f)
  manifest = json.loads(storage.read_text(f"{work}/records/manifest.json"))
  # The config hash covers the KB paths, gs:// here; all else equals the local run's.
  assert ({**manifest, "curation_config_hash": ""} ==
          {**local_manifest, "curation_config_hash": ""})
  assert report["counts_by_status"] == case["local_report"]["counts_by_status"]
  # Each candidate line journaled once: none lost, none doubled.
  for name in storage.listdir(f"{work}/candidates"):
    journal = [json.loads(line)["index"]
               for line in storage.read_text(f"{work}/curation/journal/{name}").splitlines()]
    candidates = storage.read_text(f"{work}/candidates/{name}").splitlines()
    assert sorted(journal) == list(range(len(candidates))), name


# ---------------------------------------------------------------------------------------
# (b) An orbax checkpoint save and restore.

def _params(seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return {"dense": {"kernel": rng.standard_normal((64, 32), np.float32),
                    "bias": rng.standard_normal(32, np.float32)},
          "embed": rng.standard_normal((100, 16), np.float32),
          "step": np.asarray(7, np.int32)}


def checkpoint_round_trip(workdir: str, out: str) -> None:
  """Saves `_params()` in `workdir` with rew_jax's checkpoint Manager (asynchronously, as
  training does), restores it with a new Manager and writes what came back to `out`."""
  from rew_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  manager = ckpt_lib.Manager(workdir, keep=2)
  manager.save(1, _params())
  manager.close()
  manager = ckpt_lib.Manager(workdir, keep=2)
  assert manager.latest_step() == 1
  restored = manager.restore(1, _params(seed=1))  # Only shapes and dtypes count.
  manager.close()
  flat = {"kernel": restored["dense"]["kernel"], "bias": restored["dense"]["bias"],
          "embed": restored["embed"], "step": restored["step"]}
  np.savez(out, **{k: np.asarray(v) for k, v in flat.items()})


@pytest.mark.slow
def test_a_checkpoint_saved_and_restored_through_faults_has_equal_params(gcs, faults,
                                                                        tmp_path):
  """In a process of its own: tensorstore reads its read timeout (curl's low-speed abort)
  once per process, from the environment that REW_JAX_STORAGE_RETRIES sets."""
  faults.add(
      Fault("status", status=503, times=2, path="uploadType=media"),   # tensorstore writes
      Fault("status", status=429, times=2, path="tensorstore="),       # tensorstore reads
      Fault("reset", times=1, path=r"uploadType=media&name=[^&]*/d/"),
      Fault("reset", times=1, path=r"uploadType=media&name=[^&]*manifest\.ocdbt",
            forward=True),  # The manifest is written; tensorstore does not know it.
      # A request lost in a stall. curl averages speed over 5 s, so tensorstore gives up on
      # it about 6 s + read_timeout_s in, and sends it again.
      Fault("stall", times=1, stall_s=10, forward=False, path="uploadType=media"),
      Fault("status", status=503, times=1, path="_CHECKPOINT_METADATA"),  # gcsfs
      Fault("status", status=503, times=1, path=BUCKET_LOOKUP))        # google-cloud-storage
  out = tmp_path / "restored.npz"
  script = (f"import sys; sys.path[:0] = [{HERE!r}, {REPO!r}]; import test_gcs_faults as t; "
            f"t.checkpoint_round_trip({gcs.url('faults/ckpt')!r}, {str(out)!r})")
  policy = ",".join(f"{k}={v}" for k, v in {**TEST_POLICY, "read_timeout_s": 1}.items())
  env = dict(os.environ, PYTHONPATH=REPO, **{storage.RETRY_ENV: policy})
  done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                        text=True, timeout=240)
  assert done.returncode == 0, done.stderr[-4000:]
  with np.load(out) as restored:
    params = _params()
    assert np.array_equal(restored["kernel"], params["dense"]["kernel"])
    assert np.array_equal(restored["bias"], params["dense"]["bias"])
    assert np.array_equal(restored["embed"], params["embed"])
    assert int(restored["step"]) == 7
  assert faults.injected == {"503": 4, "429": 2, "reset": 2, "stall": 1}, faults.injected
  assert not _not_sent_again(faults), _not_sent_again(faults)
  assert {("503", "tensorstore"), ("429", "tensorstore"), ("reset", "tensorstore"),
          ("stall", "tensorstore"), ("503", "python-gcsfs"),
          ("503", "gcloud-python")} <= _clients(faults), faults.faults_by_client()


# ---------------------------------------------------------------------------------------
# (c) A training read of gs:// records.

@pytest.fixture(scope="module")
def bucket_records(proxy, gcs):
  """24 records in 3 shards in the bucket, and their canonical bytes."""
  recs = [make_record(i) for i in range(24)]
  directory = gcs.url("faults/records")
  records.write_records(directory, recs, records_per_shard=8)
  return directory, [records.encode(r) for r in recs]


def test_a_training_read_through_faults_reads_the_same_bytes(bucket_records, faults,
                                                             tmp_path, monkeypatch):
  monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "cache"))  # Nothing staged yet.
  directory, expected = bucket_records
  faults.add(
      Fault("status", status=503, times=1, path="manifest.json"),
      Fault("status", status=429, times=1, path="rew-00000"),
      Fault("reset", times=1, path="/download/.*rew-00001"),
      Fault("stall", times=1, stall_s=2.5, path="/download/.*rew-00002"))
  source = records.RecordSource(directory, check_hashes=True)  # What the Grain input reads.
  assert [source[i] for i in range(len(source))] == expected
  assert faults.injected == {"503": 1, "429": 1, "reset": 1, "stall": 1}, faults.injected
  assert not _not_sent_again(faults)
  assert {("stall", "python-gcsfs"), ("reset", "python-gcsfs")} <= _clients(faults)


# ---------------------------------------------------------------------------------------
# (d) Faults that outlast the retries.

@pytest.mark.slow
def test_a_shard_that_never_answers_fails_the_read_naming_it(bucket_records, faults,
                                                             tmp_path, monkeypatch):
  """gcsfs gives up after its 6 attempts (about 31 to 36 s of backoff, gcsfs's own and not
  an option); the error names the object, which gcsfs's own ("Service Unavailable, 503")
  does not."""
  monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "cache"))
  directory, _ = bucket_records
  shard = f"{directory}/rew-00001.array_record"
  faults.add(Fault("status", status=503, times=None, path=r"rew-00001\.array_record"))
  start = time.monotonic()
  with pytest.raises(storage.StorageError, match=f"^{shard}: HttpError: .*503"):
    records.RecordSource(directory)
  assert time.monotonic() - start < 60
  assert faults.injected["503"] >= 6


# orbax's failed save leaves a tensorstore callback for an event loop it has closed.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_checkpoint_object_that_never_answers_fails_naming_it(gcs, faults):
  """tensorstore gives up after the policy's max_retries, with small delays set here; its
  own errors name the OCDBT database and key (a save) or the object (a restore)."""
  from rew_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  storage.configure_retries(max_retries=2)
  try:
    workdir = gcs.url("faults/ckpt_never")
    faults.add(Fault("status", status=503, times=None, path=r"uploadType=media&name=[^&]*/d/"))
    start = time.monotonic()
    manager = ckpt_lib.Manager(workdir)  # Asynchronous, as in training: it fails at wait().
    with pytest.raises(ValueError, match=rf"{workdir}/checkpoints/1/state/.*All 2 retry "
                                         "attempts failed: Service Unavailable"):
      manager.save(1, _params())
      manager.wait()
    assert time.monotonic() - start < 20
    assert faults.faults_by_client()[("503", "tensorstore")] == 3  # 1 + max_retries.
    faults.clear()
    workdir = gcs.url("faults/ckpt_saved")
    manager = ckpt_lib.Manager(workdir)
    manager.save(1, _params())
    manager.close()
    faults.add(Fault("status", status=503, times=None, path=r"/d/[0-9a-f]+\?alt=media"))
    start = time.monotonic()
    # A store that does not answer is no mismatch of the config's state.
    with pytest.raises(storage.StorageError,
                       match=rf"{workdir}/checkpoints/1/state/d/[0-9a-f]+: All 2 retry"):
      ckpt_lib.Manager(workdir).restore(1, _params(seed=1))
    assert time.monotonic() - start < 20
    assert faults.injected["503"] >= 3
  finally:
    storage.configure_retries(max_retries=TEST_POLICY["max_retries"])
