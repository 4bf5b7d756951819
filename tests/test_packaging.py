"""Packaging: the wheel holds every module and the configs, and `rew-jax` runs from it.

The wheel test installs the wheel into a fresh venv without the checkout and runs the
documented commands from a directory outside it, as a user of `pip install rew_jax` would.
"""

import configparser
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("demo", "world", "candidates", "curate", "records", "train", "eval", "plot")


def source_packages() -> set[str]:
  """Every folder of rew_jax/ that holds modules, and configs/ as rew_jax.configs."""
  found = {"rew_jax.configs"}
  for root, dirs, files in os.walk(os.path.join(REPO, "rew_jax")):
    dirs[:] = [d for d in dirs if d != "__pycache__"]
    if any(f.endswith(".py") for f in files):
      found.add(os.path.relpath(root, REPO).replace(os.sep, "."))
  return found


def test_setup_cfg_lists_every_subpackage():
  # setup.cfg lists the packages by hand (configs/ is mapped in), so a new subpackage that is
  # not listed would be silently missing from the wheel.
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(REPO, "setup.cfg"))
  assert set(cfg["options"]["packages"].split()) == source_packages()
  assert cfg["options"]["package_dir"].split() == ["rew_jax.configs", "=", "configs"]


def run(cmd, timeout, **kwargs):
  result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          timeout=timeout, check=False, **kwargs)
  assert result.returncode == 0, (cmd, result.stdout[-3000:], result.stderr[-3000:])
  return result


@pytest.mark.slow
def test_wheel_installs_and_runs_the_demo_outside_the_checkout(tmp_path):
  # Build from a copy, so that the checkout gets no build/ or egg-info from the test.
  src = tmp_path / "src"
  ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
  for name in ("rew_jax", "configs"):
    shutil.copytree(os.path.join(REPO, name), src / name, ignore=ignore)
  for name in ("setup.cfg", "pyproject.toml", "README.md"):
    shutil.copy(os.path.join(REPO, name), src / name)
  dist = tmp_path / "dist"
  run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
       "-w", dist, src], timeout=300, cwd=tmp_path)
  (wheel,) = dist.glob("rew_jax-*.whl")
  names = set(zipfile.ZipFile(wheel).namelist())
  assert {"rew_jax/configs/demo.py", "rew_jax/configs/curate_demo.py"} <= names
  for root, _, files in os.walk(src / "rew_jax"):
    for f in files:
      if f.endswith(".py"):
        assert os.path.relpath(os.path.join(root, f), src).replace(os.sep, "/") in names

  # A fresh venv with the wheel alone; the test interpreter's installed dependencies are
  # reachable through a .pth file. A .pth inside a folder added that way is not processed,
  # so the checkout's editable install does not leak in (asserted below).
  env_dir = tmp_path / "venv"
  venv.create(env_dir, with_pip=False)
  py = env_dir / "bin" / "python"
  site = run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
             timeout=60).stdout.strip()
  deps = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
  with open(os.path.join(site, "_test_deps.pth"), "w") as f:
    f.write("\n".join(deps) + "\n")
  run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", "--no-index",
       wheel], timeout=300)

  outside = tmp_path / "elsewhere"
  outside.mkdir()
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
  env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TF_CPP_MIN_LOG_LEVEL="3")
  where = run([py, "-c", "import rew_jax; from rew_jax import config; print(rew_jax.__file__); "
               "print(config.packaged_config_path('demo.py'))"],
              timeout=120, cwd=outside, env=env).stdout.split()
  assert all(p.startswith(site + os.sep) for p in where), where

  rew_jax_cmd = env_dir / "bin" / "rew-jax"
  usage = run([rew_jax_cmd, "--help"], timeout=120, cwd=outside, env=env).stdout
  assert all(f"  {stage} " in usage for stage in STAGES), usage

  workdir = tmp_path / "demo"
  run([rew_jax_cmd, "demo", "--config", "configs/demo.py:runlocal", "--workdir", workdir],
      timeout=1200, cwd=outside, env=env)
  assert (workdir / "report.md").is_file() and (workdir / "report.json").is_file()
