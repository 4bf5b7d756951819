"""gs:// workdirs and records, against a local GCS emulator (the `gcs` fixture, conftest.py).

Train → checkpoint → SIGKILL → resume → eval with the workdir, the records and the OVEN
queries in a bucket gives the losses and metrics of the same run on local disk, and nothing
lands on the local disk: the tests run in an empty current directory that must stay empty,
and no `gs:` folder (what `os.path.abspath("gs://...")` would make) may appear.
The documented GiT-L command runs, in its runlocal form, with a gs:// workdir and records.
"""

import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from rew_jax import __main__ as cli
from rew_jax import checkpoint as ckpt_lib
from rew_jax import config as config_lib
from rew_jax import metrics as metrics_lib
from rew_jax import records
from rew_jax.data import code_table
from rew_jax import storage
from rew_jax import train as train_lib
from rew_jax.data import synthetic_images as si

import test_docstring_commands as docs

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CONFIG = os.path.join(HERE, "tiny_train_config.py")
NAMES = ["Crimson Plain Tower", "Cobalt Striped Dome", "Amber Spotted Lotus",
         "Jade Checkered Kestrel"]
LOOKS = [si.Look("tower", "crimson", "plain"), si.Look("dome", "cobalt", "striped"),
         si.Look("lotus", "amber", "spotted"), si.Look("kestrel", "jade", "checkered")]


def tiny_records(n: int = 48, seed: int = 0) -> list[records.RewRecord]:
  rng = np.random.default_rng(seed)
  return [records.RewRecord(
      image_id=f"img_{i:04d}", image=si.encode_jpeg(si.draw([LOOKS[i % 4]], rng, min_size=32,
                                                              max_size=40)),
      entity_id=f"Q{i % 4}", entity_name=NAMES[i % 4], curation_status="kept", backend="test",
      candidates=[{"entity_id": f"Q{(i + 1) % 4}", "name": NAMES[(i + 1) % 4], "score": 1.0}])
      for i in range(n)]


def _write_data(root: str) -> None:
  """ROOT/records (REW records) and ROOT/oven (8 kNN queries), through rew_jax.storage."""
  records.write_records(f"{root}/records", tiny_records(), records_per_shard=16)
  rng = np.random.default_rng(1)
  refs = []
  for i in range(8):
    image_id = f"oven_{i:04d}"
    storage.write_bytes(f"{root}/oven/images/{image_id}.jpg",
                        si.encode_jpeg(si.draw([LOOKS[i % 4]], rng, min_size=32, max_size=40)))
    refs.append({"data_id": f"q{i}", "image_id": image_id, "entity_id": f"Q{i % 4}",
                 "question": "what is this?", "data_split": "entity_val_seen"})
  storage.write_text(f"{root}/oven/oven_entity_val.jsonl",
                     "".join(json.dumps(r) + "\n" for r in refs))


@pytest.fixture(scope="module")
def data(gcs, tmp_path_factory):
  """The same records and queries on local disk and in the bucket: {"local": .., "gs": ..}."""
  local = str(tmp_path_factory.mktemp("local_data"))
  os.makedirs(os.path.join(local, "oven", "images"))
  _write_data(local)
  _write_data(gcs.url("data"))
  return {"local": local, "gs": gcs.url("data")}


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch):
  """An empty current directory (which must stay so) and a cache for remote shards."""
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "cache"))
  yield cwd
  assert os.listdir(cwd) == [], "a gs:// path leaked to the local disk"
  for dirpath, dirnames, _ in os.walk(tmp_path):
    assert "gs:" not in dirnames, f"{dirpath}/gs: was made: a gs:// path went through os.path"
  for folder in (REPO, HERE):
    assert not os.path.exists(os.path.join(folder, "gs:")), f"{folder}/gs: was made"


def _arg(root, steps, every):
  return f"{CONFIG}:data_dir={root}/records,steps={steps},every={every},knn={root}/oven"


def _cli(argv, cwd):
  env = dict(os.environ, PYTHONPATH=REPO)  # The code under test, from any directory.
  return subprocess.Popen([sys.executable, "-m", "rew_jax", *argv], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _last(workdir, kind):
  """step → row, the last row per step (a killed run logs its resumed steps again)."""
  return {r["step"]: r for r in metrics_lib.read(workdir) if r["kind"] == kind}


@pytest.mark.slow
def test_train_kill_resume_eval_in_a_bucket_equals_local_disk(gcs, data, empty_cwd, tmp_path):
  steps, every = 16, 4
  local_run, run = str(tmp_path / "local_run"), gcs.url("run")
  train_lib.train(config_lib.load_config(_arg(data["local"], steps, every)).train, local_run)

  train = ["train", "--config", _arg(data["gs"], steps, every), "--workdir", run]
  proc = _cli(train, empty_cwd)
  deadline = time.time() + 300
  while (ckpt_lib.latest_step(run) or 0) < every:
    assert proc.poll() is None, proc.stdout.read()
    assert time.time() < deadline, "no checkpoint appeared in the bucket"
    time.sleep(0.1)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  proc.stdout.close()
  assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
  assert ckpt_lib.latest_step(run) < steps

  proc = _cli(train, empty_cwd)
  log = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, log
  assert "resumed from step" in log and run in log, log
  assert ckpt_lib.latest_step(run) == steps

  losses = {s: r["loss"] for s, r in _last(run, "train").items()}
  assert losses == {s: r["loss"] for s, r in _last(local_run, "train").items()}
  assert sorted(losses) == list(range(1, steps + 1))
  assert storage.listdir(f"{run}/tensorboard")

  # The evaluator ran at the last step in both runs (memory: records; queries: OVEN files).
  local_eval = storage.read_text(f"{local_run}/eval/knn/step_{steps}/metrics.json")
  assert storage.read_text(f"{run}/eval/knn/step_{steps}/metrics.json") == local_eval
  assert _last(run, "eval")[steps]["knn/curated_top1"] == json.loads(local_eval)["curated_top1"]

  # The eval stage on the bucket's checkpoint writes the same results again.
  storage.rmtree(f"{run}/eval")
  arg = shlex.quote(_arg(data["gs"], steps, every))
  assert cli.main(shlex.split(f"eval --config {arg} --workdir {run}")) == 0
  assert storage.read_text(f"{run}/eval/knn/step_{steps}/metrics.json") == local_eval


@pytest.mark.slow
def test_git_large_rew_command_with_a_bucket_workdir(gcs, empty_cwd, capsys):
  """configs/git_large_rew.py's documented command, runlocal, gs://BUCKET → the emulator.

  One record's image is a JPEG cut in half: the recipe (input.on_error="skip") counts it in
  the `skipped` column and trains on; 3 steps × 8 examples see all 16 records."""
  recs = tiny_records(16)
  recs[5] = dataclasses.replace(recs[5], image=recs[5].image[:len(recs[5].image) // 2])
  records.write_records(gcs.url("rew/records"), recs, records_per_shard=8)
  # The recipe trains on GER-ALD codes, read from the KB build's file in the bucket.
  code_table.save_codes(gcs.url("rew/kb/ald_codes.npz"), [f"Q{i}" for i in range(4)],
                        np.array([[2000 + i, 102, 0] for i in range(4)], np.int32),
                        length=3, seed=0)
  ran = 0
  for argv in docs.commands(docs.docstring(os.path.join(REPO, "configs", "git_large_rew.py"))):
    argv = docs.runlocal(argv, bucket=gcs.bucket)
    assert any(a.startswith("gs://") for a in argv), argv
    assert cli.main(argv) == 0, (argv, capsys.readouterr().err[-2000:])
    ran += 1
  assert ran == 1
  assert ckpt_lib.latest_step(gcs.url("rew_gitl")) == 3
  rows = [r for r in metrics_lib.read(gcs.url("rew_gitl")) if r["kind"] == "train"]
  assert [r["step"] for r in rows] == [1, 2, 3]
  assert sum(r["skipped"] for r in rows) >= 1 and all(np.isfinite(r["loss"]) for r in rows)


def test_a_mirror_moves_changes_both_ways_and_publishes_the_marker_last(gcs, tmp_path,
                                                                       monkeypatch):
  """Two processes' working copies of one bucket directory (the KB index's case)."""
  monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "cache"))
  remote = gcs.url("mirror/index")
  a, b = storage.Mirror(remote, tag="process0"), storage.Mirror(remote, tag="process1")
  assert a.active and a.local != b.local and a.local.startswith(str(tmp_path / "cache"))
  assert b.pull() == 0
  for name, text in [("meta.json", "{}"), ("ids.bin", "abc"), ("emb/emb-00000.npy", "x")]:
    os.makedirs(os.path.dirname(os.path.join(a.local, name)), exist_ok=True)
    with open(os.path.join(a.local, name), "w") as f:
      f.write(text)
  assert a.push() == 3 and a.push() == 0  # Only what changed since the last sync.
  assert storage.listdir(remote) == ["emb", "ids.bin", "meta.json"]
  assert b.pull() == 3 and b.pull() == 0
  with open(os.path.join(b.local, "emb", "emb-00000.npy")) as f:
    assert f.read() == "x"
  # Process 1 adds a shard; process 0 rebuilds (meta.json removed, ids.bin rewritten).
  with open(os.path.join(b.local, "emb", "emb-00001.npy"), "w") as f:
    f.write("y")
  assert b.push() == 1 and a.pull() == 1
  os.remove(os.path.join(a.local, "meta.json"))
  with open(os.path.join(a.local, "ids.bin"), "w") as f:
    f.write("abcd")
  assert a.push() == 1
  assert not storage.exists(f"{remote}/meta.json")  # Gone before the tables changed.
  assert b.pull() == 1 and not os.path.exists(os.path.join(b.local, "meta.json"))
  with open(os.path.join(b.local, "ids.bin")) as f:
    assert f.read() == "abcd"
  local = storage.Mirror(str(tmp_path / "plain"))
  assert not local.active and local.local == str(tmp_path / "plain") and local.push() == 0


@pytest.mark.slow
def test_candidates_with_a_bucket_workdir_equal_local_disk(gcs, empty_cwd, tmp_path,
                                                          monkeypatch):
  """KB index, entity embeddings and candidate shards in a bucket (the index worked on in a
  local mirror); the KB file read from the bucket too. A rerun reuses what is there."""
  from rew_jax.kb import candidates  # pylint: disable=g-import-not-at-top
  import kb.test_candidates as kbt  # pylint: disable=g-import-not-at-top
  world = kbt.make_world(tmp_path / "world")
  kb_file = os.path.join(world, "kb", "Wiki6M_ver_1_0.jsonl.gz")
  with open(kb_file, "rb") as f:
    storage.write_bytes(gcs.url("kb/Wiki6M_ver_1_0.jsonl.gz"), f.read())
  quiet = lambda *_: None
  local_out = candidates.run_candidates(kbt._config(world, k=3), str(tmp_path / "local"),
                                        log=quiet)
  config = kbt._config(world, k=3)
  config.kb.path = gcs.url("kb/Wiki6M_ver_1_0.jsonl.gz")
  out = candidates.run_candidates(config, gcs.url("work"), log=quiet)
  assert out == gcs.url("work/candidates")
  assert list(candidates.read_candidates(out)) == list(candidates.read_candidates(local_out))
  manifest = json.loads(storage.read_text(f"{out}/manifest.json"))
  assert manifest["records"] == 7 and manifest["kb"]["index_dir"] == gcs.url("work/kb")
  index = storage.listdir(gcs.url("work/kb"))
  assert "meta.json" in index and "ids.bin" in index, index
  assert any(n.startswith("embeddings-") for n in index), index
  # A second process on another machine (an empty cache) opens the bucket's index as is.
  monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "other_machine"))
  storage.remove(f"{out}/candidates-00001-of-00003.jsonl")
  log = []
  candidates.run_candidates(config, gcs.url("work"), log=log.append)
  assert any("2 of this host's 3 already done" in line for line in log), log
  assert list(candidates.read_candidates(out)) == list(candidates.read_candidates(local_out))


def test_the_kb_index_opened_memory_mapped_refuses_a_bucket(tmp_path, monkeypatch):
  """The KB index is opened memory-mapped: a gs:// path there is an error naming it, never a
  local "gs:" folder (the stages work on a local mirror of a bucket's index)."""
  from rew_jax.kb import wiki6m  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(tmp_path)
  with pytest.raises(storage.LocalOnlyError, match=r"KB index 'gs://b/kb'"):
    wiki6m.EntityKB("gs://b/kb")
  assert os.listdir(tmp_path) == []
