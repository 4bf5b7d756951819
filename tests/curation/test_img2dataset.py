"""img2dataset itself fetches the world's images from 127.0.0.1 (some broken or missing),
then candidates → curate run on its webdataset output; every sample is accounted for.

img2dataset pins opencv-python-headless < 5, which the project's stack is past, so it runs
from its own virtual environment, made once per test machine beside the project's.
"""

import contextlib
import fcntl
import functools
import http.server
import json
import os
import subprocess
import sys
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rew_jax import records
from rew_jax.curation import run
from rew_jax.kb import candidates

from curationcase import curate_config

pytestmark = pytest.mark.slow

IMG2DATASET = "img2dataset==1.47.0"
MISSING, BROKEN, TRUNCATED = (3, 17), (5,), (30,)


@pytest.fixture(scope="session")
def img2dataset_bin():
  venv = os.path.join(sys.prefix, "img2dataset-venv")
  exe = os.path.join(venv, "bin", "img2dataset")
  stamp = os.path.join(venv, "installed")
  with open(venv + ".lock", "w") as lock:  # Two test workers: one installs.
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (os.path.isfile(stamp) and open(stamp).read() == IMG2DATASET):
      subprocess.run([sys.executable, "-m", "venv", "--clear", venv], check=True)
      pip = subprocess.run([os.path.join(venv, "bin", "python"), "-m", "pip", "install",
                            "-q", IMG2DATASET], capture_output=True, text=True)
      assert pip.returncode == 0, f"installing {IMG2DATASET} failed:\n{pip.stderr[-3000:]}"
      with open(stamp, "w") as f:
        f.write(IMG2DATASET)
  return exe


@contextlib.contextmanager
def http_server(root):
  handler = functools.partial(_QuietHandler, directory=root)
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield f"http://127.0.0.1:{server.server_address[1]}"
  finally:
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
  def log_message(self, *args):
    pass


def _url_list(world, served, base):
  """A parquet url list of the world's web images; a few 404, broken or truncated."""
  rows = [json.loads(line) for line in open(os.path.join(world, "web", "captions.jsonl"))]
  os.makedirs(os.path.join(served, "bad"))
  urls = []
  for i, row in enumerate(rows):
    url = f"{base}/world/{row['image_path']}"
    data = open(os.path.join(world, row["image_path"]), "rb").read()
    if i in MISSING:
      url = f"{base}/gone/{i}.jpg"
    elif i in BROKEN or i in TRUNCATED:  # Not an image at all / a JPEG cut short.
      cut = data[:100] if i in BROKEN else data[:len(data) * 3 // 4]
      with open(os.path.join(served, "bad", f"{i}.jpg"), "wb") as f:
        f.write(cut)
      url = f"{base}/bad/{i}.jpg"
    urls.append(url)
  path = os.path.join(served, "urls.parquet")
  pq.write_table(pa.table({"url": urls, "caption": [r["caption"] for r in rows],
                           "image_id": [r["image_id"] for r in rows]}), path)
  return rows, path


@pytest.fixture(scope="module")
def fetched(world, img2dataset_bin, tmp_path_factory):
  """img2dataset's webdataset output for the fixture world's web images."""
  served = str(tmp_path_factory.mktemp("served"))
  os.symlink(os.path.join(world, "world"), os.path.join(served, "world"))
  out = os.path.join(served, "shards")
  with http_server(served) as base:
    rows, url_list = _url_list(os.path.join(world, "world"), served, base)
    proc = subprocess.run(
        [img2dataset_bin, f"--url_list={url_list}", "--input_format=parquet",
         "--url_col=url", "--caption_col=caption", "--save_additional_columns=['image_id']",
         "--output_format=webdataset", f"--output_folder={out}", "--processes_count=1",
         "--thread_count=4", "--resize_mode=no", "--number_sample_per_shard=20",
         "--enable_wandb=False", "--distributor=multiprocessing", "--retries=0"],
        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return rows, out


def test_img2dataset_shards_curate_with_every_sample_accounted_for(world, fetched,
                                                                  tmp_path):
  rows, shards = fetched
  assert sorted(f for f in os.listdir(shards) if f.endswith(".tar")) == [
      "00000.tar", "00001.tar", "00002.tar"]
  work = str(tmp_path / "w")
  cc = candidates.default_config()
  cc.data.format, cc.data.path = "webdataset", shards
  cc.kb.path = os.path.join(world, "world", "kb", "Wiki6M_ver_1_0.jsonl.gz")
  cc.retrieval.method, cc.retrieval.k, cc.artifacts.codes = "bm25", 5, False
  candidates.run_candidates(cc, work, log=lambda *_: None)
  manifest = json.load(open(os.path.join(work, "candidates", "manifest.json")))
  # img2dataset decodes every image (OpenCV), even with resize_mode=no: the broken and the
  # truncated JPEG fail there and reach no tar.
  assert manifest["upstream_failed"] == {"failed_to_download": 2, "failed_to_resize": 2}
  upstream = []
  for name in sorted(os.listdir(os.path.join(work, "candidates"))):
    if name.endswith(".stats.json"):
      upstream += json.load(open(os.path.join(work, "candidates", name))).get(
          "upstream_failed", [])
  ids = [r["image_id"] for r in rows]
  assert sorted(u["image_id"] for u in upstream) == sorted(
      ids[i] for i in MISSING + BROKEN + TRUNCATED)
  assert all("404" in u["error"] for u in upstream if u["status"] == "failed_to_download")

  config = curate_config()
  config.curation.kb_source = cc.kb.path
  report = run.curate(config, work, verbose=False)
  curated = {r.image_id: r for r in records.read_records(os.path.join(work, "records"),
                                                         check_hashes=True)}
  assert report["skipped_inputs"] == 0
  assert report["candidates_inputs"]["upstream_failed"] == manifest["upstream_failed"]
  left_out = {u["image_id"] for u in upstream}
  assert sorted(curated) == sorted(set(ids) - left_out)  # Each sample exactly once.
  assert len(curated) + len(left_out) == len(rows)

  # The same images curated from the world's own files give the same labels.
  reference = {r.image_id: r for r in records.read_records(
      os.path.join(_world_records(world, tmp_path), "records"))}
  assert {i: (r.entity_id, r.curation_status) for i, r in curated.items()} == {
      i: (reference[i].entity_id, reference[i].curation_status) for i in curated}


def _world_records(world, tmp_path):
  from curationcase import link_inputs  # pylint: disable=g-import-not-at-top
  work = link_inputs(world, tmp_path / "reference")
  run.curate(curate_config(), work, verbose=False)
  return work
