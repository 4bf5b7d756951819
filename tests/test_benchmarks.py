"""benchmarks/accelerator.sh, prepared for a GPU, runs its three steps end to end on CPU at toy
sizes (--dry-run) and prints one JSON object with every figure the docs report."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_accelerator_script_dry_run_on_cpu(tmp_path):
  env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=REPO,
             XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  proc = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "accelerator.sh"),
                         "--dry-run", "--out", str(tmp_path)], capture_output=True, text=True,
                        env=env, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["benchmark"] == "accelerator" and result["dry_run"] is True
  train = result["train_decode"]
  assert train["step_s"] > 0 and 0 < train["mfu"] < 1 and train["decode_tokens_per_s"] > 0
  assert train["beams"] == 4 and train["device"] == "cpu"
  assert result["input_pipeline"]["ours"] > 0
  topk = result["topk"]["topk"]
  assert topk["ours_s"] > 0 and topk["queries"] == 256 and result["topk"]["baseline_s"] is None
  assert sorted(os.listdir(tmp_path)) == sorted(
      f"{step}.{ext}" for step in ("train_decode", "input_pipeline", "topk")
      for ext in ("log", "err", "json"))


@pytest.mark.slow
def test_eval_benchmark_prints_the_ratio_to_the_serial_loader():
  """benchmarks/eval.py at toy size: both loaders predict the same, and the JSON line holds
  questions/s of each and their ratio for both settings."""
  proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "eval.py"), "--quick",
                         "--questions", "64", "--batch-size", "32"], capture_output=True,
                        text=True, env=dict(os.environ, PYTHONPATH=REPO), timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["benchmark"] == "eval" and sorted(result["settings"]) == ["224", "demo"]
  for name, s in result["settings"].items():
    assert s["same_predictions"] is True, name
    assert s["ours"] > 0 and s["serial"] > 0 and s["predict_only_qps"] > 0
    assert s["speedup"] == pytest.approx(s["ours"] / s["serial"], abs=0.01)
  assert result["settings"]["224"]["questions"] == 32


@pytest.mark.slow
def test_curation_benchmark_prints_batch_beside_online():
  """benchmarks/curation.py --batch at toy size: both paths give the same records, the
  batch path makes no online call, and the JSON line holds records/s and the cost per 1k
  records of each (batch at half the online price by default)."""
  proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "curation.py"),
                         "--records", "60", "--concurrency", "2", "--latency", "0.05",
                         "--batch", "--batch-records", "60", "--batch-concurrency", "8"],
                        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO),
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  b = json.loads(proc.stdout.strip().splitlines()[-1])["batch"]
  assert b["records_equal"] is True and b["online_calls_in_batch_mode"] == 0
  for mode in ("online", "batch"):
    assert b[mode]["records"] == 60 and b[mode]["records_per_s"] > 0
    assert b[mode]["usd_per_1k_records"] > 0
  assert b["batch"]["input_tokens"] == b["online"]["input_tokens"]
  assert b["cost_ratio_batch_vs_online"] == pytest.approx(0.5, abs=0.01)
  assert b["batch"]["jobs"] >= 1
