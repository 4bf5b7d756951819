"""The Beam pipeline on real engines: the DirectRunner in multi-processing mode and the
DaskRunner on a dask.distributed LocalCluster of 2 worker processes (started here, once per
module), against the local runner; kill and rerun; dead letters; the CLI's --dry-run."""

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from rew_jax import config as config_lib
from rew_jax import records
from rew_jax.curation import inputs, run, section, shards
from rew_jax.curation.backends.base import Backend, Reply, TransientError

from curationcase import NUM_IMAGES, curate_config, link_inputs

beam = pytest.importorskip("apache_beam", reason="apache-beam (the beam extra) is not "
                           "installed: pip install 'rew_jax[beam]'")
distributed = pytest.importorskip("distributed", reason="dask[distributed] (the beam extra) "
                                  "is not installed")

from rew_jax.curation import beam as beam_curation  # pylint: disable=g-import-not-at-top
from rew_jax.curation import beam_options  # pylint: disable=g-import-not-at-top

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def beam_config(**beam_block):
  config = curate_config()
  config.beam = beam_options.default_config()
  config.beam.overload_ratio = 0.0  # No adaptive waits (tested alone below): the scripted
                                    # early 429s would hold calls for seconds.
  config.beam.update(beam_block)
  return config


def encoded(workdir):
  return [records.encode(r) for r in records.read_records(
      os.path.join(workdir, "records"), check_hashes=True)]


def manifest(workdir):
  with open(os.path.join(workdir, "records", "manifest.json")) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def local(world, tmp_path_factory):
  """The local runner's output: the reference."""
  work = link_inputs(world, tmp_path_factory.mktemp("local") / "w")
  report = run.curate(curate_config(), work, verbose=False)
  return work, report


@pytest.fixture(scope="module")
def dask_address():
  cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                     dashboard_address=":0")
  client = distributed.Client(cluster)
  yield cluster.scheduler_address
  client.close()  # Before the cluster, or the client logs reconnect errors for 30 s.
  cluster.close()


def check_same_as_local(local, work, report):
  assert encoded(work) == encoded(local[0])
  assert manifest(work) == manifest(local[0])  # Counts, shard sha256s, config hash.
  assert report["counts_by_status"] == local[1]["counts_by_status"]
  assert report["accuracy_vs_truth"] == local[1]["accuracy_vs_truth"]


def test_direct_runner_two_processes_equals_local_runner(world, local, tmp_path):
  work = link_inputs(world, tmp_path / "w")
  config = beam_config(num_workers=2, direct_running_mode="multi_processing")
  lines = []
  report = beam_curation.curate(config, work, runner="direct", log=lines.append)
  assert "--direct_num_workers=2 --direct_running_mode=multi_processing" in lines[0]
  check_same_as_local(local, work, report)
  # Every record was labelled here: no dead letters (tests below make some).
  assert report["dead_letters"]["by_kind"] == {}
  # A second run finds every shard committed and runs no pipeline.
  lines.clear()
  again = beam_curation.curate(config, work, runner="direct", log=lines.append)
  assert not lines and again["counts_by_status"] == report["counts_by_status"]


def test_dask_runner_two_workers_equals_local_runner(world, local, dask_address, tmp_path):
  work = link_inputs(world, tmp_path / "w")
  config = beam_config(dask_address=dask_address)
  lines = []
  report = beam_curation.curate(config, work, runner="dask", log=lines.append)
  assert f"--dask_client_address={dask_address}" in lines[0]
  check_same_as_local(local, work, report)
  # Both worker processes took shards (3 shards, one Dask partition each).
  client = distributed.Client(dask_address)
  try:
    pids = client.run(os.getpid)
  finally:
    client.close()
  assert len(pids) == 2


def _committed(work):
  d = os.path.join(work, "records")
  return [f for f in os.listdir(d) if f.endswith(records.SHARD_SUFFIX)] if os.path.isdir(d) else []


@pytest.mark.slow
def test_dask_run_killed_midway_then_rerun_loses_and_duplicates_nothing(
    world, local, dask_address, tmp_path):
  """`python -m rew_jax curate --runner dask` on the test's cluster is killed with SIGKILL
  once a shard is committed; the rerun finishes the others: records equal the local runner's."""
  work = link_inputs(world, tmp_path / "w")
  config_path = tmp_path / "curate_dask.py"
  config_path.write_text(
      f"import sys; sys.path.insert(0, {HERE!r})\n"
      "from curationcase import curate_config\n"
      "from rew_jax.curation import beam_options\n"
      "def get_config(arg=None):\n"
      "  c = curate_config()\n"
      "  c.curation.simulated.latency_s = 0.05\n"
      "  c.curation.concurrency = 1\n"
      "  c.beam = beam_options.default_config()\n"
      "  return c\n")
  cmd = [sys.executable, "-m", "rew_jax", "curate", "--config", str(config_path),
         "--workdir", work, "--quiet", "--runner", "dask",
         f"--config.beam.dask_address={dask_address}"]
  proc = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 120
  while not _committed(work) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
  assert not os.path.exists(os.path.join(work, "records", "manifest.json"))
  lines = []
  config = config_lib.load_config(str(config_path))  # The same command, in this process.
  config.beam.dask_address = dask_address
  report = beam_curation.curate(config, work, runner="dask", log=lines.append)
  assert lines and not lines[0].startswith("curating 3 of 3"), lines  # It resumed.
  # The latency setting is part of the config hash; all else equals the local run's.
  assert encoded(work) == encoded(local[0])
  assert ({**manifest(work), "curation_config_hash": ""} ==
          {**manifest(local[0]), "curation_config_hash": ""})
  assert report["counts_by_status"] == local[1]["counts_by_status"]
  journal = []
  d = os.path.join(work, "curation", "journal")
  for f in sorted(os.listdir(d)):
    journal += [(f, json.loads(line)["index"]) for line in open(os.path.join(d, f))]
  assert len(journal) == len(set(journal)) == NUM_IMAGES


class Scripted(Backend):
  """Answers "none" (an abstention); a name outside the KB for `unknown_ids`; a 429 for
  `failing_ids`."""
  name = "scripted"

  def __init__(self, failing_ids, unknown_ids):
    self.failing_ids, self.unknown_ids = set(failing_ids), set(unknown_ids)
    self.calls = []

  def generate(self, prompt, timeout_s):
    self.calls.append(prompt.image_id)
    if prompt.image_id in self.failing_ids:
      raise TransientError("429", "rate limited (429)")
    name = "Zzyzx Qwertyuiop" if prompt.image_id in self.unknown_ids else "none"
    return Reply(text=json.dumps({"entity_name": name, "justification": "j",
                                  "rationale": "", "qa": []}))


def _letters(work):
  d = os.path.join(work, "curation", "dead_letters")
  return [json.loads(line) for f in sorted(os.listdir(d)) for line in open(os.path.join(d, f))]


def test_dead_letters_and_a_rerun_retries_only_the_failed(world, tmp_path, monkeypatch):
  """A 429 after max_attempts, an undecodable image and a name outside the KB each become
  a dead letter with its reason; the shards with failed records wait for the rerun, which
  asks the LLM again for exactly those."""
  work = tmp_path / "w"
  work.mkdir()
  for name in ("world", "kb"):
    os.symlink(os.path.join(world, name), work / name)
  shutil.copytree(os.path.join(world, "candidates"), work / "candidates")
  shard2 = sorted((work / "candidates").glob("candidates-*.jsonl"))[2]
  lines = shard2.read_text().splitlines()
  row = json.loads(lines[0])
  corrupt = tmp_path / "corrupt.jpg"
  corrupt.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
  row["image_path"] = str(corrupt)
  shard2.write_text("\n".join([json.dumps(row)] + lines[1:]) + "\n")
  failing = ["web_00000003", "web_00000030"]  # In shards 0 and 1.
  backend = Scripted(failing, unknown_ids=["web_00000005"])
  monkeypatch.setattr(section, "backend_from_config", lambda *a, **k: backend)
  config = beam_config(num_workers=1, direct_running_mode="in_memory")
  config.curation.max_attempts = 3
  with pytest.raises(shards.IncompleteRunError, match="2 records still failed"):
    beam_curation.curate(config, str(work), runner="direct")
  assert _committed(str(work)) == ["rew-00002.array_record"]  # Shards 0 and 1 wait.
  assert not os.path.exists(work / "records" / "manifest.json")
  by_kind = {}
  for d in _letters(str(work)):
    by_kind.setdefault(d["kind"], []).append(d)
  assert [d["image_id"] for d in by_kind["failed"]] == failing
  assert all(d["retried_on_rerun"] and "429" in d["reason"] for d in by_kind["failed"])
  assert [d["image_id"] for d in by_kind["bad_image"]] == [row["image_id"]]
  assert "cannot decode image" in by_kind["bad_image"][0]["reason"]
  assert [(d["image_id"], d["reason"]) for d in by_kind["unresolved"]] == [
      ("web_00000005", "unknown_name")]
  assert backend.calls.count("web_00000003") == 3  # max_attempts.
  assert row["image_id"] not in backend.calls  # A bad image never reaches the LLM.
  backend.failing_ids.clear()
  backend.calls.clear()
  report = beam_curation.curate(config, str(work), runner="direct")
  assert sorted(backend.calls) == failing  # Only the failed records were asked again.
  assert report["dead_letters"]["by_kind"] == {"bad_image": 1, "unresolved": 1}
  assert sum(report["counts_by_status"].values()) == NUM_IMAGES - 1  # The bad image.
  ids = [r.image_id for r in records.read_records(str(work / "records"), check_hashes=True)]
  assert len(ids) == len(set(ids)) == NUM_IMAGES - 1 and row["image_id"] not in ids


def _beam_config_file(path):
  """A config file: the tests' curation config with the default `beam` block."""
  path.write_text(
      f"import sys; sys.path.insert(0, {HERE!r})\n"
      "from curationcase import curate_config\n"
      "from rew_jax.curation import beam_options\n"
      "def get_config(arg=None):\n"
      "  c = curate_config()\n"
      "  c.beam = beam_options.default_config()\n"
      "  return c\n")
  return path


def test_dry_run_prints_the_dataflow_submission(tmp_path, capsys):
  from rew_jax import __main__ as cli
  config_path = _beam_config_file(tmp_path / "curate_df.py")
  argv = ["curate", "--config", str(config_path), "--workdir", "gs://b/W", "--runner",
          "dataflow", "--dry-run", "--config.beam.project=p", "--config.beam.region=r",
          "--config.beam.temp_location=gs://b/tmp", "--config.beam.max_num_workers=64",
          "--config.beam.wheel=dist/rew_jax-0.1.0-py3-none-any.whl"]
  assert cli.main(argv) == 0
  out = capsys.readouterr().out
  assert "runner = 'DataflowRunner'" in out and "max_num_workers = 64" in out
  assert "extra_packages = ['dist/rew_jax-0.1.0-py3-none-any.whl']" in out
  assert "--temp_location=gs://b/tmp" in out
  # Local paths, a missing project or no package for the workers are refused by name.
  assert cli.main([a.replace("gs://b/W", str(tmp_path)) for a in argv]) == 2
  assert "share no disk" in capsys.readouterr().err
  assert cli.main([a for a in argv if "project" not in a]) == 2
  assert "beam.project" in capsys.readouterr().err
  assert cli.main([a for a in argv if "wheel" not in a]) == 2
  assert "sdk_container_image" in capsys.readouterr().err
  # Batch jobs are submitted by one driver, not by every worker.
  assert cli.main(argv + ["--config.curation.mode_of_calls=batch"]) == 2
  assert "use --runner local" in capsys.readouterr().err


@pytest.mark.parametrize("wire", ["openai", "gemini"])
def test_http_backends_in_the_pipeline_throttled_and_dead_lettered(world, tmp_path, monkeypatch,
                                                                   wire):
  """The openai and gemini backends inside the pipeline against the stub server: several
  calls in flight per worker, 429s honoured and retried, and a record whose calls are always
  refused becomes a `failed` dead letter that the rerun retries alone."""
  import threading  # pylint: disable=g-import-not-at-top
  from stubserver import StubServer  # pylint: disable=g-import-not-at-top
  from test_http_backends import KEY, answer_top_candidate, prompt_text  # pylint: disable=g-import-not-at-top
  answer = answer_top_candidate(wire)
  items = [it for path in inputs.candidate_shards(os.path.join(world, "candidates"))
           for it in inputs.read_items(path)]
  captions = collections.Counter(it.caption for it in items)
  # Past the first calls (the stub's three scripted 429s answer whichever come first).
  victim = next(it for it in items if captions[it.caption] == 1 and it.index > 8)
  refused = {victim.caption}  # The stub knows a record by its caption in the prompt.
  state = {"in_flight": 0, "max_in_flight": 0, "asked": []}
  lock = threading.Lock()
  too_many = (429, {"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}},
              {"Retry-After": "0"}, 0)

  def default(path, body):
    text = prompt_text(path, body)
    image_id = next((c for c in refused if c in text), None)
    with lock:
      state["in_flight"] += 1
      state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
      state["asked"].append(image_id)
    time.sleep(0.02)
    with lock:
      state["in_flight"] -= 1
    return too_many if image_id else answer(path, body)

  stub = StubServer(default)
  stub.script += [too_many] * 3  # The first three calls are throttled, then answered.
  monkeypatch.setenv("STUB_KEY", KEY)
  try:
    work = link_inputs(world, tmp_path / "w")
    config = beam_config(num_workers=1, direct_running_mode="in_memory")
    config.curation.backend = wire
    config.curation.concurrency = 4
    config.curation.max_attempts = 4
    if wire == "openai":
      config.curation.openai = dict(base_url=stub.url + "/v1", model="m", api_key_env="STUB_KEY")
    else:
      config.curation.gemini = dict(base_url=stub.url, api_key_env="STUB_KEY")
    with pytest.raises(shards.IncompleteRunError, match="1 records still failed"):
      beam_curation.curate(config, work, runner="direct")
    assert state["max_in_flight"] >= 2  # Calls of one worker overlap.
    assert state["asked"].count(victim.caption) == 4  # max_attempts, then a dead letter.
    [letter] = [d for d in _letters(work) if d["kind"] == "failed"]
    assert letter["image_id"] == victim.image_id and "429" in letter["reason"]
    refused.clear()
    state["asked"].clear()
    stub.requests.clear()
    report = beam_curation.curate(config, work, runner="direct")
  finally:
    stub.close()
  assert state["asked"] == [None]  # The rerun asked for the failed record only.
  assert report["records"] == NUM_IMAGES and report["retries"] >= 3
  for root, _, files in os.walk(work):  # The key is never written.
    for f in files:
      with open(os.path.join(root, f), "rb") as fh:
        assert KEY.encode() not in fh.read(), f


@pytest.mark.parametrize("runner", ["local", "direct"])
def test_a_bucket_workdir_equals_local_disk(world, local, gcs, tmp_path, monkeypatch, runner):
  """Candidates, images, the KB index, records and curation state all in gs:// (a local GCS
  emulator), the records in a custom `curation.out_dir`: with either executor of the shard
  engine, the records equal the local runner's on local disk, the state lies beside them,
  and nothing lands on the local disk. A lost shard is rewritten from the bucket's journal."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  from rew_jax import storage  # pylint: disable=g-import-not-at-top
  root = gcs.url(f"curate_{runner}")
  work = f"{root}/W"
  kb = os.path.join(world, "kb")
  for d, _, files in os.walk(kb):  # The index, built by the fixture.
    for f in files:
      rel = os.path.relpath(os.path.join(d, f), kb)
      epath.Path(kb, rel).copy(f"{root}/kb/{rel}", overwrite=True)
  for shard in inputs.candidate_shards(os.path.join(world, "candidates")):
    rows = [json.loads(line) for line in open(shard)]
    for row in rows:  # Each image to the bucket; the shard names its gs:// copy.
      name = f"{root}/images/{row['image_id']}.jpg"
      epath.Path(row["image_path"]).copy(name, overwrite=True)
      row["image_path"] = name
    storage.write_text(f"{work}/candidates/{os.path.basename(shard)}",
                       "".join(json.dumps(r) + "\n" for r in rows))
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  config = beam_config(num_workers=1, direct_running_mode="in_memory")
  config.curation.kb_index_dir = f"{root}/kb"
  config.curation.kb_source = os.path.join(world, "world", "kb", "Wiki6M_ver_1_0.jsonl.gz")
  config.curation.truth_path = os.path.join(world, "world", "truth", "web_truth.jsonl")
  config.curation.out_dir = f"{root}/recs/"
  monkeypatch.setenv("REW_JAX_CACHE_DIR", str(tmp_path / "cache"))  # Staged KB index.
  def curate():
    if runner == "local":
      return run.curate(config, work, verbose=False)
    return beam_curation.curate(config, work, runner="direct")
  report = curate()
  in_bucket = lambda: [records.encode(r) for r in records.read_records(f"{root}/recs",
                                                                       check_hashes=True)]
  assert in_bucket() == encoded(local[0])
  remote = json.loads(storage.read_text(f"{root}/recs/manifest.json"))
  assert ({**remote, "curation_config_hash": ""} ==
          {**manifest(local[0]), "curation_config_hash": ""})
  assert report["accuracy_vs_truth"] == local[1]["accuracy_vs_truth"]
  assert storage.exists(f"{root}/recs_curation/report.md")
  first = os.path.basename(inputs.candidate_shards(os.path.join(world, "candidates"))[0])
  journal = storage.read_text(f"{root}/recs_curation/journal/{first}").splitlines()
  assert len(journal) == len(storage.read_text(f"{work}/candidates/{first}").splitlines())
  # Shard 0 lost after its journal was written: the rerun rewrites it from the journal.
  storage.remove(f"{root}/recs/rew-00000.array_record")
  storage.remove(f"{root}/recs/manifest.json")
  curate()
  assert in_bucket() == encoded(local[0])
  assert os.listdir(cwd) == []  # No "gs:" folder made by a path gone through os.path.
  # The index copied once: to each worker's cache (Beam), to a local mirror (local runner).
  assert len(os.listdir(tmp_path / "cache" / ("mirror" if runner == "local" else "kb_index"))) == 1


@pytest.mark.slow
def test_cli_dask_runner_starts_and_stops_its_own_cluster(world, local, tmp_path, capsys):
  """`curate --runner dask` without an address: a LocalCluster for the run, then closed."""
  from rew_jax import __main__ as cli  # pylint: disable=g-import-not-at-top
  work = link_inputs(world, tmp_path / "w")
  config_path = _beam_config_file(tmp_path / "curate_cli.py")
  assert cli.main(["curate", "--config", str(config_path), "--workdir", work, "--quiet",
                   "--runner", "dask", "--config.beam.num_workers=1"]) == 0
  out = capsys.readouterr().out
  assert "--dask_client_address=tcp://127.0.0.1:" in out and "records:" in out
  assert encoded(work) == encoded(local[0])
  assert manifest(work) == manifest(local[0])


def test_adaptive_limiter_waits_only_while_calls_fail():
  """Beam's client-side throttling per worker: no wait while calls succeed; once most fail,
  new calls wait (each wait reported to the runner as throttled time)."""
  now = [1000.0]

  def limiter(sleeps):
    def sleep(seconds):  # A simulated clock: no real waiting.
      sleeps.append(seconds)
      now[0] += seconds
    return beam_curation.AdaptiveLimiter(0.0, overload_ratio=2.0, delay_s=5.0, sleep=sleep,
                                         clock=lambda: now[0])
  sleeps = []
  ok = limiter(sleeps)
  for _ in range(50):
    ok.acquire()
    ok.succeeded()
  assert sleeps == []
  # Calls in flight at the start (none answered yet, none failed) never wait.
  cold = limiter(sleeps)
  for _ in range(8):
    cold.acquire()
  assert sleeps == []
  failing = limiter(sleeps)
  for _ in range(50):  # Every call fails: none reports success.
    failing.acquire()
    failing.failed()
  assert len(sleeps) > 50 and set(sleeps) == {5.0} and failing.waits == len(sleeps)
