"""The command line: help, stage dispatch, one-line errors."""

import os
import subprocess
import sys

import pytest

from rew_jax import __main__ as cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  return subprocess.run([sys.executable, "-m", "rew_jax", *args], capture_output=True,
                        text=True, cwd=REPO, timeout=120)


def test_help_lists_every_stage():
  out = _run("--help")
  assert out.returncode == 0
  for stage in ("demo", "world", "curate", "train", "eval", "records"):
    assert f"  {stage}" in out.stdout


def test_stage_help_describes_it():
  out = _run("world", "--help")
  assert out.returncode == 0
  assert "--workdir" in out.stdout and "embedded default world" in out.stdout


def test_missing_stage_is_one_line_not_a_traceback(monkeypatch, capsys):
  monkeypatch.setitem(cli.STAGES, "future", "a stage that does not exist")
  assert cli.main(["future", "--workdir", "x"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1
  assert "stage 'future' is not available" in err and "rew_jax.stages.future" in err


def test_missing_dependency_inside_a_stage_keeps_its_traceback(monkeypatch, tmp_path):
  (tmp_path / "stage_with_bad_import.py").write_text("import no_such_dependency_xyz\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.setitem(cli.STAGES, "bad", "h")
  monkeypatch.setattr(cli, "stage_module", lambda name: "stage_with_bad_import")
  with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
    cli.main(["bad"])


def test_storage_that_does_not_answer_is_one_line_and_exit_3(monkeypatch, tmp_path, capsys):
  (tmp_path / "stage_storage_down.py").write_text(
      "from rew_jax import storage\n"
      "def main(argv):\n"
      "  raise storage.StorageError('gs://b/W/records/rew-00001.array_record: HttpError: 503')\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.setitem(cli.STAGES, "down", "h")
  monkeypatch.setattr(cli, "stage_module", lambda name: "stage_storage_down")
  assert cli.main(["down"]) == 3
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "gs://b/W/records/rew-00001.array_record" in err
  assert "rerun the same command" in err


def test_unknown_stage_and_config_errors_are_one_line():
  out = _run("trian")
  assert out.returncode == 2 and "unknown stage 'trian'" in out.stderr
  out = _run("world", "--workdir", "/tmp/unused", "--config.world.num_web_imagse=3")
  assert out.returncode == 2
  assert "Traceback" not in out.stderr
  assert "num_web_images" in out.stderr  # The closest valid key is named.


def test_world_stage_writes_the_world(tmp_path):
  out = _run("world", "--workdir", str(tmp_path), "--config", "configs/demo.py:runlocal",
             "--config.world.num_web_images=20")
  assert out.returncode == 0, out.stderr
  assert "20" in out.stdout
  with open(tmp_path / "world" / "web" / "captions.jsonl") as f:
    assert len(f.readlines()) == 20
  # The same command again reuses the world; another config regenerates it.
  again = _run("world", "--workdir", str(tmp_path), "--config", "configs/demo.py:runlocal",
               "--config.world.num_web_images=20")
  assert again.returncode == 0 and "reusing" in again.stdout
  other = _run("world", "--workdir", str(tmp_path), "--config", "configs/demo.py:runlocal",
               "--config.world.num_web_images=12")
  assert other.returncode == 0 and "reusing" not in other.stdout
  with open(tmp_path / "world" / "web" / "captions.jsonl") as f:
    assert len(f.readlines()) == 12
