"""Curation through the OpenAI Batch API (curation.mode_of_calls="batch") against a stub:
the same records as the online path, faults re-submitted, kill -9 resumes without
submitting a shard twice."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from rew_jax import records
from rew_jax.curation import batch, run
from rew_jax.errors import ConfigError

from batchstub import BatchStub
from curationcase import NUM_IMAGES, curate_config, link_inputs, scripted_reply
from stubserver import openai_body

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def answer(body):
  """The online and batch calls' stub LLM (curationcase.scripted_reply)."""
  text = next(p["text"] for p in body["messages"][-1]["content"] if p["type"] == "text")
  reply, complete = scripted_reply(text)
  return 200, (openai_body(reply, prompt_tokens=100, completion_tokens=20) if complete else openai_body(reply))


def config_for(stub, calls="batch", **kw):
  c = curate_config("openai", mode_of_calls=calls, batch_poll_initial_s=0.001,
                    batch_poll_max_s=0.01, price_per_mtok_in=2.0, price_per_mtok_out=8.0,
                    **kw)
  c.curation.openai = dict(base_url=stub.url + "/v1", model="m")
  return c


def encoded(work):
  return [records.encode(r) for r in
          records.read_records(os.path.join(work, "records"), check_hashes=True)]


@pytest.fixture
def stub():
  s = BatchStub(answer)
  yield s
  s.close()


@pytest.fixture(scope="module")
def online(world, tmp_path_factory):
  s = BatchStub(answer)
  try:
    work = link_inputs(world, tmp_path_factory.mktemp("online") / "w")
    report = run.curate(config_for(s, "online"), work, verbose=False)
  finally:
    s.close()
  return encoded(work), report


def test_batch_records_equal_the_online_records(world, online, stub, tmp_path):
  work = link_inputs(world, tmp_path / "w")
  report = run.curate(config_for(stub), work, verbose=False)
  assert stub.online_calls == 0
  assert encoded(work) == online[0] and len(online[0]) == NUM_IMAGES
  statuses = report["counts_by_status"]
  assert statuses.get("kept") and statuses.get("corrected") and statuses.get("unresolved")
  assert report["parse_failures"]  # The cut-off replies were re-asked in a later job.
  b = report["batch"]
  assert (b["input_tokens"], b["output_tokens"]) == (online[1]["usage"]["input_tokens"],
                                                     online[1]["usage"]["output_tokens"])
  assert b["cost_usd_online"] == online[1]["usage"]["cost_usd"] > 0
  assert b["cost_usd_batch"] == pytest.approx(b["cost_usd_online"] / 2, abs=1e-4)
  # Per shard: one job for every record, one for the parse re-asks.
  assert b["jobs"] == 6 and b["resubmitted_requests"] == 0
  assert all(j["status"] == "completed" and j["submitted_at"] and j["completed_at"]
             for j in b["timeline"])
  saved = json.load(open(os.path.join(work, "curation", "report.json")))
  assert saved["batch"]["timeline"] == b["timeline"]
  assert "## Batch jobs" in open(os.path.join(work, "curation", "report.md")).read()
  # Every request line the online path would POST, under a unique custom id.
  ids = [cid for _, cids in stub.created for cid in cids]
  assert len(ids) == len(set(ids)) == report["llm_calls"]
  # A rerun is a no-op: nothing submitted again.
  run.curate(config_for(stub), work, verbose=False)
  assert len(stub.created) == 6 and encoded(work) == online[0]


def test_failed_malformed_and_expired_requests_are_resubmitted(world, online, stub, tmp_path):
  stub.fail_lines = {0: 3, 3: 2}
  stub.malformed = {0: 5}  # Lines 3-4 of job 0.
  stub.expire = {1, 4}
  work = link_inputs(world, tmp_path / "w")
  report = run.curate(config_for(stub, batch_max_requests=15), work, verbose=False)
  assert encoded(work) == online[0]
  b = report["batch"]
  assert b["resubmitted_requests"] > 5 and b["jobs"] > 6
  assert max(len(cids) for _, cids in stub.created) == 15  # Several jobs per round.
  assert {j["status"] for j in b["timeline"]} == {"completed", "expired"}
  resent = [cid for _, cids in stub.created for cid in cids if not cid.endswith("-a0")]
  assert len(resent) == b["resubmitted_requests"]
  assert (b["input_tokens"], b["output_tokens"]) == (online[1]["usage"]["input_tokens"],
                                                     online[1]["usage"]["output_tokens"])


def test_requests_failing_every_submission_are_left_for_the_rerun(world, online, stub,
                                                                  tmp_path):
  stub.fail_lines = {0: 1, 1: 1}  # The first record of shard 0, both submissions.
  work = link_inputs(world, tmp_path / "w")
  from rew_jax.curation import shards  # pylint: disable=g-import-not-at-top
  with pytest.raises(shards.IncompleteRunError, match="1 records still failed"):
    run.curate(config_for(stub, max_attempts=2), work, verbose=False)
  assert not os.path.exists(os.path.join(work, "records", "rew-00000.array_record"))
  stub.fail_lines = {}
  run.curate(config_for(stub, max_attempts=2), work, verbose=False)
  assert encoded(work) == online[0]


def test_multi_call_rounds_equal_the_online_records(world, tmp_path):
  """multi_call asks the rationale and QA after the entity: later rounds, later jobs."""
  got = []
  for calls in ("online", "batch"):
    s = BatchStub(answer)
    try:
      work = link_inputs(world, tmp_path / calls)
      report = run.curate(config_for(s, calls, mode="multi_call"), work, verbose=False)
    finally:
      s.close()
    got.append((encoded(work), report["llm_calls"]))
  assert got[0] == got[1] and got[0][1] > NUM_IMAGES
  assert any(r.rationale for r in records.read_records(os.path.join(work, "records")))


def test_batch_needs_a_backend_with_a_batch_service(world, tmp_path):
  work = link_inputs(world, tmp_path / "w")
  with pytest.raises(ConfigError, match="mode_of_calls"):
    run.curate(curate_config(mode_of_calls="batch"), work, verbose=False)
  with pytest.raises(ConfigError, match="mode_of_calls"):
    run.curate(curate_config(mode_of_calls="bulk"), work, verbose=False)


def test_kill_after_submit_resumes_without_resubmitting(world, online, stub, tmp_path):
  work = link_inputs(world, tmp_path / "w")
  config_path = tmp_path / "curate_batch.py"
  config_path.write_text(
      f"import sys; sys.path.insert(0, {HERE!r})\n"
      "from curationcase import curate_config\n"
      "def get_config(arg=None):\n"
      "  c = curate_config('openai', mode_of_calls='batch', batch_poll_initial_s=0.01,\n"
      "                    batch_poll_max_s=0.02)\n"
      f"  c.curation.openai = dict(base_url={stub.url + '/v1'!r}, model='m')\n"
      "  return c\n")
  cmd = [sys.executable, "-m", "rew_jax", "curate", "--config", str(config_path),
         "--workdir", work, "--quiet"]
  env = dict(os.environ, PYTHONPATH=REPO)
  state = os.path.join(work, "curation", "batch", "candidates-00000-of-00003.json")
  stub.hold = True  # Jobs stay in progress: the driver is polling when it dies.
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
  deadline = time.time() + 60
  while proc.poll() is None and time.time() < deadline:
    if stub.created and os.path.exists(state) and "batch_id" in open(state).read():
      time.sleep(0.1)  # A few polls.
      break
    time.sleep(0.01)
  assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL and len(stub.created) == 1
  stub.hold = False
  done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-3000:]
  assert encoded(work) == online[0]
  firsts = [bid for bid, cids in stub.created if cids[0].endswith("-a0") and
            cids[0].split("-")[2] == "one_call" and cids[0].split("-")[3] == "0"]
  by_shard = [cids[0].split("-")[0] for bid, cids in stub.created if bid in firsts]
  assert by_shard == ["s0", "s1", "s2"]  # Each shard's first job created once.
  ids = [cid for _, cids in stub.created for cid in cids]
  assert len(ids) == len(set(ids))


def test_custom_ids_and_results_parsing():
  assert batch.key_of(batch.custom_id(2, "17-one_call-1", 3)) == "17-one_call-1"
  text = "\n".join([
      json.dumps({"id": "1", "custom_id": "s0-1-qa-0-a0",
                  "response": {"status_code": 200, "body": openai_body('{"qa": []}')},
                  "error": None}),
      json.dumps({"id": "2", "custom_id": "s0-2-qa-0-a0",
                  "response": {"status_code": 400, "body": {"error": "bad image"}},
                  "error": None}),
      json.dumps({"id": "3", "custom_id": "s0-3-qa-0-a0",
                  "response": {"status_code": 503, "body": "overloaded"}, "error": None}),
      json.dumps({"id": "4", "custom_id": "s0-4-qa-0-a0", "response": None,
                  "error": {"code": "batch_expired"}}),
      '{"id": "5", "custom_id": "s0-5-q', ""])
  got = batch.read_results(text)
  assert got["s0-1-qa-0-a0"].text == '{"qa": []}' and got["s0-1-qa-0-a0"].input_tokens == 11
  assert got["s0-2-qa-0-a0"].reason == "http_400"
  assert got["s0-3-qa-0-a0"] is None and got["s0-4-qa-0-a0"] is None
  assert "s0-5-q" not in "".join(got)


def test_a_job_created_but_not_journaled_is_found_not_created_again(world, online, stub,
                                                                    tmp_path, monkeypatch):
  """The driver dies between the create request and journaling its answer: the rerun finds
  the batch by its input file among the service's batches."""
  work = link_inputs(world, tmp_path / "w")
  real = batch.Client.create

  def create_then_die(self, *args, **kw):
    real(self, *args, **kw)
    raise KeyboardInterrupt  # Before the batch id is journaled.

  monkeypatch.setattr(batch.Client, "create", create_then_die)
  with pytest.raises(KeyboardInterrupt):
    run.curate(config_for(stub), work, verbose=False)
  state = json.load(open(os.path.join(work, "curation", "batch",
                                      "candidates-00000-of-00003.json")))
  assert [j["status"] for j in state["jobs"]] == ["creating"] and len(stub.created) == 1
  monkeypatch.setattr(batch.Client, "create", real)
  run.curate(config_for(stub), work, verbose=False)
  assert encoded(work) == online[0] and len(stub.created) == 6
  ids = [cid for _, cids in stub.created for cid in cids]
  assert len(ids) == len(set(ids))
