"""The curation runner: records + manifest + report, statuses, resume, kill -9, bad input."""

import collections
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from rew_jax import records
from rew_jax.curation import inputs, run, section, shards
from rew_jax.curation.backends.base import Backend, TransientError
from rew_jax.curation.backends.simulated import SimulatedLLM
from rew_jax.errors import ConfigError

from curationcase import NUM_IMAGES, PER_SHARD, curate_config, link_inputs

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def input_ids(world):
  ids = []
  for path in inputs.candidate_shards(os.path.join(world, "candidates")):
    ids += [it.image_id for it in inputs.read_items(path)]
  return ids


def output(workdir):
  return list(records.read_records(os.path.join(workdir, "records"), check_hashes=True))


@pytest.fixture(scope="module")
def finished(world, tmp_path_factory):
  work = link_inputs(world, tmp_path_factory.mktemp("finished") / "w")
  report = run.curate(curate_config(), work, verbose=False)
  return work, report


def test_records_manifest_and_report(world, finished):
  work, report = finished
  out = output(work)
  assert [r.image_id for r in out] == input_ids(world)  # Exactly once, in input order.
  manifest = records.Manifest.load(os.path.join(work, "records"))
  manifest.verify(os.path.join(work, "records"), check_hashes=True)
  assert manifest.total == NUM_IMAGES and len(manifest.shards) == 3
  assert manifest.curation_config_hash == section.curation_hash(curate_config())
  counts = collections.Counter(r.curation_status for r in out)
  assert counts == collections.Counter(manifest.counts_by_status)
  assert set(counts) <= {"kept", "corrected", "abstained", "unresolved"}
  assert counts["kept"] and counts["corrected"]
  for r in out:
    assert r.image[:2] == b"\xff\xd8" and r.backend == "simulated"
    assert bool(r.entity_id) == (r.curation_status in ("kept", "corrected"))
    if r.curation_status == "kept":
      assert r.entity_id == r.candidates[0].entity_id
    if r.rationale:
      # Argues for the answered entity (its name, maybe without "(...)" or in lower case).
      assert r.entity_name.split(" (")[0].lower() in r.rationale.lower()
  acc = report["accuracy_vs_truth"]
  assert acc["images_with_truth"] == NUM_IMAGES
  assert acc["records_pct"] > acc["candidates_top1_pct"]
  assert report["parse_failures"] and report["llm_calls"] >= NUM_IMAGES
  with open(os.path.join(work, "curation", "report.json")) as f:
    saved = json.load(f)
  assert saved["counts_by_status"] == manifest.counts_by_status and saved["examples"]
  md = open(os.path.join(work, "curation", "report.md")).read()
  assert "top-1 candidate (Entity-WebLI)" in md and "](thumbs/" in md
  for ex in saved["examples"]:
    if ex["thumbnail"]:
      assert os.path.isfile(os.path.join(work, "curation", ex["thumbnail"]))


def test_accuracy_matches_truth_by_hand(world, finished):
  work, report = finished
  truth, kind = {}, {}
  with open(os.path.join(world, "world", "truth", "web_truth.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      truth[row["image_id"]] = row["entity_id"]
      kind[row["image_id"]] = row["caption_kind"]
  out = output(work)
  acc = report["accuracy_vs_truth"]
  for name, figures in [("all", acc)] + sorted(acc["by_caption_kind"].items()):
    rows = [r for r in out if name == "all" or kind[r.image_id] == name]
    right = sum(r.entity_id == truth[r.image_id] for r in rows)
    top1 = sum(bool(r.candidates) and r.candidates[0].entity_id == truth[r.image_id]
               for r in rows)
    assert figures["images_with_truth"] == len(rows)
    assert figures["records_pct"] == round(100 * right / len(rows), 2)
    assert figures["candidates_top1_pct"] == round(100 * top1 / len(rows), 2)
  assert set(acc["by_caption_kind"]) == set(kind.values())
  md = open(os.path.join(work, "curation", "report.md")).read()
  for name in acc["by_caption_kind"]:
    assert f"| {name} | " in md


def test_rerun_is_a_no_op_and_config_change_is_refused(world, finished, tmp_path):
  work, _ = finished
  before = [records.encode(r) for r in output(work)]

  class NoCalls(Backend):
    name = "simulated"

    def generate(self, prompt, timeout_s):
      raise AssertionError("a finished run must not call the LLM again")

  run.curate(curate_config(), work, backend=NoCalls(), verbose=False)
  assert [records.encode(r) for r in output(work)] == before
  with pytest.raises(ConfigError, match="another config"):
    run.curate(curate_config(num_qa=2), work, verbose=False)


class Flaky(Backend):
  """Delegates to the simulator; the first `fail_first` calls of some images raise."""
  name = "simulated"

  def __init__(self, inner, failing: set, fail_first: int = 10**9, kind="server"):
    self.inner, self.failing, self.fail_first, self.kind = inner, failing, fail_first, kind
    self.calls = collections.Counter()

  def generate(self, prompt, timeout_s):
    self.calls[prompt.image_id] += 1
    if prompt.image_id in self.failing and self.calls[prompt.image_id] <= self.fail_first:
      raise TransientError(self.kind, "stub failure", retry_after=0.0)
    return self.inner.generate(prompt, timeout_s)


def test_transient_failures_are_retried_then_left_for_the_rerun(world, finished, tmp_path):
  reference = [records.encode(r) for r in output(finished[0])]
  work = link_inputs(world, tmp_path / "w")
  ids = input_ids(world)
  # The runner's backend: it knows the candidates' KB (the default `kb_path`).
  kb_source = json.load(open(os.path.join(world, "candidates", "manifest.json")))["kb"]["path"]
  sim = SimulatedLLM(**dict(curate_config().curation.simulated, kb_path=kb_source))
  # Two images fail 3 times (recovered by retries), one fails forever.
  flaky = Flaky(sim, {ids[0], ids[5], ids[30]}, fail_first=3)
  flaky.failing_forever = ids[30]
  orig = flaky.generate

  def generate(prompt, timeout_s):
    if prompt.image_id == ids[30]:
      flaky.calls[prompt.image_id] += 1
      raise TransientError("rate_limit", "HTTP 429", retry_after=0.0)
    return orig(prompt, timeout_s)

  flaky.generate = generate
  where = rf"-00001-of-\d+\.jsonl:{30 % PER_SHARD + 1} \({ids[30]}\)"  # Shard 1, line 11.
  with pytest.raises(shards.IncompleteRunError,
                     match=rf"1 records .*{where}: .*HTTP 429.*dead_letters\)"):
    run.curate(curate_config(max_attempts=4), work, backend=flaky, verbose=False)
  assert flaky.calls[ids[30]] == 4
  # The record that failed is quarantined with its reason (as by the Beam runners).
  letters_dir = os.path.join(work, "curation", "dead_letters")
  letters = [json.loads(line) for name in sorted(os.listdir(letters_dir))
             for line in open(os.path.join(letters_dir, name), encoding="utf-8")]
  failed = [d for d in letters if d["kind"] == "failed"]
  assert [(d["image_id"], d["retried_on_rerun"]) for d in failed] == [(ids[30], True)]
  assert "HTTP 429" in failed[0]["reason"]
  # The others are replies the format faults left unparsable: final, not retried.
  assert all(d["kind"] == "unresolved" and not d["retried_on_rerun"] for d in letters
             if d not in failed)
  names = sorted(os.listdir(os.path.join(work, "records")))
  assert names == ["rew-00000.array_record", "rew-00002.array_record"]  # Shard 1 uncommitted.
  # The rerun calls the LLM only for the missing record.
  again = Flaky(sim, set())
  report = run.curate(curate_config(max_attempts=4), work, backend=again, verbose=False)
  assert set(again.calls) == {ids[30]}
  assert [records.encode(r) for r in output(work)] == reference
  assert report["retries"] == 6 and report["transient_errors"] == {"server": 6}
  # Retried and labelled: no longer quarantined; the unparsable replies stay.
  assert "failed" not in report["dead_letters"]["by_kind"]
  assert [json.loads(line)["kind"] for n in sorted(os.listdir(letters_dir))
          for line in open(os.path.join(letters_dir, n))] == [
              d["kind"] for d in letters if d not in failed]


def test_top1_candidate_baseline(world, tmp_path):
  work = link_inputs(world, tmp_path / "w")
  report = run.curate(curate_config("top1_candidate"), work, verbose=False)
  out = output(work)
  for r in out:
    if r.candidates:
      assert (r.curation_status, r.entity_id) == ("candidate", r.candidates[0].entity_id)
    else:
      assert (r.curation_status, r.entity_id) == ("unresolved", "")
  acc = report["accuracy_vs_truth"]
  assert acc["records_pct"] == acc["candidates_top1_pct"] and report["llm_calls"] == 0


@pytest.mark.parametrize("mode", ["multi_call", "direct"])
def test_other_modes(world, tmp_path, mode):
  work = link_inputs(world, tmp_path / "w")
  report = run.curate(curate_config(mode=mode), work, verbose=False)
  out = output(work)
  assert len(out) == NUM_IMAGES
  labelled = [r for r in out if r.entity_id]
  if mode == "multi_call":
    # A rationale or QA call may fail to parse twice (10% malformed in this config).
    assert sum(bool(r.rationale) for r in labelled) >= 0.8 * len(labelled)
    assert sum(bool(r.qa) for r in labelled) >= 0.8 * len(labelled)
    assert report["llm_calls"] >= NUM_IMAGES + 2 * len(labelled)
  else:
    assert not any(r.rationale or r.qa for r in out)


def test_bad_candidates_line(world, tmp_path):
  work = link_inputs(world, tmp_path / "w")
  cand = tmp_path / "cand"
  cand.mkdir()
  good = open(inputs.candidate_shards(os.path.join(world, "candidates"))[0]).readline()
  (cand / "candidates-00000-of-00001.jsonl").write_text(
      good + '{"image_id": "x", "caption": 3}\n' + "not json\n")
  config = curate_config(candidates_dir=str(cand))
  with pytest.raises(inputs.InputError, match=r"candidates-00000-of-00001.jsonl:2: field"):
    run.curate(config, work, verbose=False)
  config.curation.skip_bad_inputs = True
  report = run.curate(config, work, verbose=False, restart=True)
  assert report["records"] == 1 and report["skipped_inputs"] == 2


def _journal_lines(work):
  d = os.path.join(work, "curation", "journal")
  if not os.path.isdir(d):
    return 0
  return sum(open(os.path.join(d, f), "rb").read().count(b"\n") for f in os.listdir(d))


def test_kill_dash_nine_and_resume_is_exactly_once(world, finished, tmp_path):
  """A real subprocess is killed with SIGKILL twice mid-run; the rerun completes and the
  output equals an uninterrupted run's, with one journal entry per input record."""
  reference = [records.encode(r) for r in output(finished[0])]
  work = link_inputs(world, tmp_path / "w")
  config_path = tmp_path / "curate_test.py"
  config_path.write_text(
      f"import sys; sys.path.insert(0, {HERE!r})\n"
      "from curationcase import curate_config\n"
      "def get_config(arg=None):\n"
      "  c = curate_config()\n"
      "  c.curation.simulated.latency_s = 0.03\n"
      "  c.curation.concurrency = 2\n"
      "  return c\n")
  cmd = [sys.executable, "-m", "rew_jax", "curate", "--config", str(config_path),
         "--workdir", work, "--quiet"]
  env = dict(os.environ, PYTHONPATH=REPO)
  for stop_at in (8, 27):  # Kill once inside shard 0, once inside shard 1.
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while _journal_lines(work) < stop_at and proc.poll() is None and time.time() < deadline:
      time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not os.path.exists(os.path.join(work, "records", "manifest.json"))
  done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  assert [records.encode(r) for r in output(work)] == reference
  journal = []
  d = os.path.join(work, "curation", "journal")
  for f in sorted(os.listdir(d)):
    journal += [(f, json.loads(line)["index"]) for line in open(os.path.join(d, f))]
  assert len(journal) == len(set(journal)) == NUM_IMAGES


def test_cli(world, tmp_path, capsys):
  from rew_jax import __main__ as cli
  work = link_inputs(world, tmp_path / "w")
  config_path = tmp_path / "curate_cli.py"
  config_path.write_text(
      f"import sys; sys.path.insert(0, {HERE!r})\n"
      "from curationcase import curate_config\n"
      "def get_config(arg=None):\n"
      "  return curate_config(arg or 'simulated')\n")
  assert cli.main(["curate", "--config", f"{config_path}:top1_candidate", "--workdir", work,
                   "--quiet", "--config.curation.num_qa=2"]) == 0
  printed = capsys.readouterr().out
  assert "curated 48 records with top1_candidate" in printed and "top-1 candidate" in printed
  # A typo in an override is a one-line user error.
  assert cli.main(["curate", "--config", str(config_path), "--workdir", work,
                   "--config.curation.num_qaa=2"]) == 2
  assert "num_qa" in capsys.readouterr().err


def test_rate_limiter_spaces_calls_across_threads():
  import threading
  from rew_jax.curation import core
  limiter = core.RateLimiter(per_s=100.0)
  stamps = []
  lock = threading.Lock()

  def call():
    limiter.acquire()
    with lock:
      stamps.append(time.monotonic())

  threads = [threading.Thread(target=call) for _ in range(8)]
  start = time.monotonic()
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert max(stamps) - start >= 0.065  # 8 calls at 100/s: the last waits ~70 ms.


def test_backoff_honours_retry_after(world):
  from rew_jax.curation import core
  sleeps = []
  sim = SimulatedLLM(malformed=0.0, refusal=0.0)
  ids = input_ids(world)
  flaky = Flaky(sim, {ids[0]}, fail_first=2)
  orig = flaky.generate

  def generate(prompt, timeout_s):
    try:
      return orig(prompt, timeout_s)
    except TransientError as e:
      raise TransientError(e.kind, "429", retry_after=1.5) from None

  flaky.generate = generate
  m = json.load(open(os.path.join(world, "candidates", "manifest.json")))
  kb = inputs.KBLookup.open(m["kb"]["path"], m["kb"]["index_dir"])
  settings = core.Settings(backoff_initial_s=0.01, backoff_max_s=2.0, max_attempts=3)
  item = inputs.read_items(inputs.candidate_shards(os.path.join(world, "candidates"))[0])[0]
  out = core.Curator(flaky, kb, settings, sleep=sleeps.append).curate(item, b"\xff\xd8")
  assert out.retries == 2 and sleeps == [1.5, 1.5]


def test_baseline_and_rew_share_a_workdir(world, tmp_path):
  work = link_inputs(world, tmp_path / "w")
  base = run.curate(curate_config("top1_candidate", out_dir=os.path.join(work, "baseline")),
                    work, verbose=False)
  rew = run.curate(curate_config(), work, verbose=False)
  assert base["counts_by_status"].get("candidate") and "candidate" not in rew["counts_by_status"]
  assert os.path.isfile(os.path.join(work, "baseline_curation", "report.md"))
  assert os.path.isfile(os.path.join(work, "curation", "report.md"))
  assert len(list(records.read_records(os.path.join(work, "baseline")))) == NUM_IMAGES
