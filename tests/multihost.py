"""Runs `python -m rew_jax ...` as several real JAX processes on this machine.

    procs = multihost.start(["train", "--config", spec, "--workdir", w])  # 2 × 4 CPU devices
    results = multihost.wait(procs)                   # [Result(rc, stdout, stderr)] by process
    multihost.check(results)                          # every process exited 0, else the logs

Each process is told the job layout through the environment that the launch scripts set
(rew_jax/distributed.py): REW_JAX_DISTRIBUTED=1, the coordinator 127.0.0.1:<a free port>,
the process count and its id, and gets `--xla_force_host_platform_device_count` fake CPU
devices; `jax.distributed.initialize` then joins them into one job whose CPU collectives go
through gloo, the code path of a TPU pod's or a GPU cluster's hosts. The processes inherit
this process's environment (PYTHONPATH, the compilation cache) and run from the repository
root, so they import the code under test.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_TRAIN_CONFIG = os.path.join(REPO, "tests", "tiny_train_config.py")


@dataclasses.dataclass
class Result:
  rc: int | None
  stdout: str
  stderr: str


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# XLA:CPU compiles about a quarter faster without its expensive LLVM passes: the tiny
# programs' run time does not matter, their compile time (every process, every run) does.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def environment(process_id: int | None, num_processes: int, devices: int, port: int | None,
                extra: dict[str, str] | None = None, fast_compile: bool = False
                ) -> dict[str, str]:
  """The environment of one process (process_id None: a plain single-process run)."""
  env = dict(os.environ)
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
  flags += " " + FAST_COMPILE if fast_compile else ""
  env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
  env["JAX_PLATFORMS"] = "cpu"
  for key in [k for k in env if k.startswith("REW_JAX_")]:
    del env[key]
  if process_id is not None:
    # No persistent compilation cache: JAX lets only process 0 write it, and a process 0
    # that reads its programs while process 1 compiles them reaches the first collective
    # more than gloo's fixed 30 s rendezvous timeout ahead on this 2-core machine.
    env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    env.update(REW_JAX_DISTRIBUTED="1", REW_JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
               REW_JAX_NUM_PROCESSES=str(num_processes), REW_JAX_PROCESS_ID=str(process_id))
  env.update(extra or {})
  return env


def start(args: list[str], *, num_processes: int = 2, devices_per_process: int = 4,
          extra_env: dict[str, str] | None = None,
          fast_compile: bool = False) -> list[subprocess.Popen]:
  """Starts `python -m rew_jax ARGS` as `num_processes` processes of one JAX job;
  `fast_compile` trades XLA's run-time optimisations for compile time (floats may differ
  in the last bits from a default build: compare such runs with each other, or within a
  tolerance)."""
  port = free_port()
  procs = []
  for i in range(num_processes):
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "rew_jax", *args], cwd=REPO, text=True,
        env=environment(i, num_processes, devices_per_process, port, extra_env, fast_compile),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE))
  return procs


def start_single(args: list[str], *, devices: int = 8,
                 extra_env: dict[str, str] | None = None) -> subprocess.Popen:
  """`python -m rew_jax ARGS` as one ordinary process with `devices` CPU devices."""
  return subprocess.Popen([sys.executable, "-m", "rew_jax", *args], cwd=REPO, text=True,
                          env=environment(None, 1, devices, None, extra_env),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait(procs: list[subprocess.Popen], timeout: float = 300) -> list[Result]:
  """Waits for every process; on timeout kills them all (a hung collective hangs all)."""
  deadline = time.time() + timeout
  results = []
  for proc in procs:
    try:
      out, err = proc.communicate(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
      out, err = proc.communicate()
      results.append(Result(None, _without_gloo(out), err + f"\n[killed after {timeout} s]"))
      continue
    results.append(Result(proc.returncode, _without_gloo(out), err))
  return results


def _without_gloo(text: str) -> str:
  """stdout less the connection lines that gloo's C++ library prints there."""
  return "".join(line for line in text.splitlines(keepends=True)
                 if not line.startswith("[Gloo] "))


def check(results: list[Result]) -> list[Result]:
  """Raises with every process's output unless all exited 0."""
  if any(r.rc != 0 for r in results):
    logs = "\n".join(f"--- process {i}: rc {r.rc}\n{r.stdout}\n{r.stderr[-6000:]}"
                     for i, r in enumerate(results))
    raise AssertionError(f"a process failed:\n{logs}")
  return results


def run(args: list[str], timeout: float = 300, **kw) -> list[Result]:
  return check(wait(start(args, **kw), timeout))


def train_args(data_dir: str, workdir: str, *, steps: int, every: int,
               mesh: str = "hybrid") -> list[str]:
  """`train` on the tiny config of tests/tiny_train_config.py."""
  return ["train", "--config", f"{TINY_TRAIN_CONFIG}:data_dir={data_dir},steps={steps},"
          f"every={every},mesh={mesh}", "--workdir", workdir]


def tiny_records(path: str, n: int = 48) -> str:
  """`n` REW records of 4 synthetic entities (one drawn object each), 16 per shard."""
  from rew_jax import records  # pylint: disable=g-import-not-at-top
  from rew_jax.data import synthetic_images as si  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  looks = [si.Look("tower", "crimson", "plain"), si.Look("dome", "cobalt", "striped"),
           si.Look("lotus", "amber", "spotted"), si.Look("kestrel", "jade", "checkered")]
  names = ["Crimson Plain Tower", "Cobalt Striped Dome", "Amber Spotted Lotus",
           "Jade Checkered Kestrel"]
  recs = [records.RewRecord(
      image_id=f"img_{i:04d}", image=si.encode_jpeg(si.draw([looks[i % 4]], rng, min_size=32,
                                                             max_size=40)),
      entity_id=f"Q{i % 4}", entity_name=names[i % 4], curation_status="kept", backend="test")
          for i in range(n)]
  records.write_records(path, recs, records_per_shard=16)
  return path
