"""Curation through Gemini batch prediction (backend gemini, curation.mode_of_calls="batch")
with google-genai itself against a stub of the Developer API: the same request bodies and
records as online calls, faults re-submitted, kill -9 resumes without a second job."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from rew_jax import records
from rew_jax.curation import batch, batch_gemini, run
from rew_jax.errors import ConfigError

from curationcase import NUM_IMAGES, curate_config, link_inputs, scripted_reply
from genai_batchstub import GenaiBatchStub
from stubserver import gemini_body

pytest.importorskip("google.genai")
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
KEY_ENV = "STUB_GEMINI_BATCH_KEY"


def answer(body):
  """The online and batch calls' stub LLM (curationcase.scripted_reply)."""
  text = next(p["text"] for p in body["contents"][0]["parts"] if "text" in p)
  reply, complete = scripted_reply(text)
  return 200, (gemini_body(reply, prompt_tokens=90, completion_tokens=30) if complete else gemini_body(reply))


def config_for(stub, calls="batch", **kw):
  c = curate_config("gemini", mode_of_calls=calls, batch_poll_initial_s=0.001,
                    batch_poll_max_s=0.01, price_per_mtok_in=0.3, price_per_mtok_out=2.5,
                    **kw)
  c.curation.gemini = dict(base_url=stub.url, model="gemini-x", api_key_env=KEY_ENV)
  return c


def encoded(work):
  return [records.encode(r) for r in
          records.read_records(os.path.join(work, "records"), check_hashes=True)]


@pytest.fixture(autouse=True)
def key(monkeypatch):
  monkeypatch.setenv(KEY_ENV, "stub-key")


@pytest.fixture
def stub():
  s = GenaiBatchStub(answer)
  yield s
  s.close()


@pytest.fixture(scope="module")
def online(world, tmp_path_factory):
  s = GenaiBatchStub(answer)
  os.environ[KEY_ENV] = "stub-key"
  try:
    work = link_inputs(world, tmp_path_factory.mktemp("online") / "w")
    report = run.curate(config_for(s, "online"), work, verbose=False)
  finally:
    s.close()
  return encoded(work), report, s.online_bodies


def test_gemini_batch_records_and_requests_equal_the_online_ones(world, online, stub,
                                                                 tmp_path):
  work = link_inputs(world, tmp_path / "w")
  report = run.curate(config_for(stub), work, verbose=False)
  assert stub.online_calls == 0
  assert encoded(work) == online[0] and len(online[0]) == NUM_IMAGES
  assert report["parse_failures"]  # Re-asked in a later job.
  # The request lines are the bodies the online backend POSTs, byte for byte as JSON.
  canon = lambda bodies: sorted(json.dumps(b, sort_keys=True) for b in bodies)
  assert canon(stub.requests) == canon(online[2])
  assert "generationConfig" in stub.requests[0] and "responseSchema" in json.dumps(
      stub.requests[0])
  b = report["batch"]
  assert (b["input_tokens"], b["output_tokens"]) == (online[1]["usage"]["input_tokens"],
                                                     online[1]["usage"]["output_tokens"])
  assert b["cost_usd_online"] > 0
  assert b["cost_usd_batch"] == pytest.approx(b["cost_usd_online"] / 2, abs=1e-4)
  assert b["jobs"] == 6 and b["resubmitted_requests"] == 0
  assert all(j["status"] == "completed" and j["batch_id"].startswith("batches/")
             for j in b["timeline"])
  run.curate(config_for(stub), work, verbose=False)  # A rerun submits nothing.
  assert len(stub.created) == 6


def test_gemini_failed_malformed_and_expired_lines_are_resubmitted(world, online, stub,
                                                                   tmp_path):
  stub.fail_lines = {0: 3, 3: 2}
  stub.malformed = {0: 5}
  stub.expire = {1}
  work = link_inputs(world, tmp_path / "w")
  report = run.curate(config_for(stub, batch_max_requests=15), work, verbose=False)
  assert encoded(work) == online[0]
  b = report["batch"]
  assert b["resubmitted_requests"] > 5
  assert {j["status"] for j in b["timeline"]} == {"completed", "expired"}
  resent = [k for _, keys in stub.created for k in keys if not k.endswith("-a0")]
  assert len(resent) == b["resubmitted_requests"]


def test_gemini_kill_after_submit_resumes_without_resubmitting(world, online, stub, tmp_path):
  work = link_inputs(world, tmp_path / "w")
  config_path = tmp_path / "curate_gemini_batch.py"
  config_path.write_text(
      f"import sys; sys.path.insert(0, {HERE!r})\n"
      "from curationcase import curate_config\n"
      "def get_config(arg=None):\n"
      "  c = curate_config('gemini', mode_of_calls='batch', batch_poll_initial_s=0.01,\n"
      "                    batch_poll_max_s=0.02)\n"
      f"  c.curation.gemini = dict(base_url={stub.url!r}, model='gemini-x',\n"
      f"                           api_key_env={KEY_ENV!r})\n"
      "  return c\n")
  cmd = [sys.executable, "-m", "rew_jax", "curate", "--config", str(config_path),
         "--workdir", work, "--quiet"]
  env = dict(os.environ, PYTHONPATH=REPO)
  state = os.path.join(work, "curation", "batch", "candidates-00000-of-00003.json")
  stub.hold = True
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
  deadline = time.time() + 90
  while proc.poll() is None and time.time() < deadline:
    if stub.created and os.path.exists(state) and "batch_id" in open(state).read():
      time.sleep(0.1)
      break
    time.sleep(0.01)
  assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert len(stub.created) == 1
  stub.hold = False
  done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-3000:]
  assert encoded(work) == online[0]
  keys = [k for _, ks in stub.created for k in ks]
  assert len(keys) == len(set(keys))


def test_gemini_job_created_but_not_journaled_is_found_by_its_display_name(
    world, online, stub, tmp_path, monkeypatch):
  work = link_inputs(world, tmp_path / "w")
  real = batch_gemini.Service.create

  def create_then_die(self, *args, **kw):
    real(self, *args, **kw)
    raise KeyboardInterrupt

  monkeypatch.setattr(batch_gemini.Service, "create", create_then_die)
  with pytest.raises(KeyboardInterrupt):
    run.curate(config_for(stub), work, verbose=False)
  assert len(stub.created) == 1
  monkeypatch.setattr(batch_gemini.Service, "create", real)
  run.curate(config_for(stub), work, verbose=False)
  assert encoded(work) == online[0] and len(stub.created) == 6


def test_gemini_result_lines_and_vertex_refused(world, tmp_path):
  from rew_jax.curation.backends.gemini import Gemini  # pylint: disable=g-import-not-at-top
  c = config_for(GenaiBatchStubless())
  service = batch_gemini.Service(Gemini(**c.curation.gemini), c.curation)
  text = "\n".join([
      json.dumps({"key": "s0-1-qa-0-a0", "response": gemini_body('{"qa": []}')}),
      json.dumps({"key": "s0-2-qa-0-a0", "error": {"code": 3, "message": "bad image"}}),
      json.dumps({"key": "s0-3-qa-0-a0", "status": {"code": 14, "message": "unavailable"}}),
      json.dumps({"key": "s0-4-qa-0-a0", "response": {"promptFeedback": {
          "blockReason": "SAFETY"}}}),
      '{"key": "s0-5-q', ""])
  got = service.read_results(text)
  assert got["s0-1-qa-0-a0"].text == '{"qa": []}' and got["s0-1-qa-0-a0"].input_tokens == 13
  assert got["s0-2-qa-0-a0"].reason == "bad_request" and got["s0-3-qa-0-a0"] is None
  assert got["s0-4-qa-0-a0"].reason == "blocked" and len(got) == 4
  c.curation.gemini.update(vertex_project="p", vertex_location="us-central1")
  with pytest.raises(ConfigError, match="Vertex AI batch prediction"):
    batch.curate(c, link_inputs(world, tmp_path / "w"), verbose=False)


class GenaiBatchStubless:
  url = "http://127.0.0.1:9"  # Nothing is sent: only the result lines are read.
