"""rew_jax.xla_cpu: the CLI's XLA:CPU flags reach the compiler, keep the user's own, and
leave the numbers unchanged."""

import json
import os
import subprocess
import sys

import numpy as np

from rew_jax import xla_cpu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = """
import json, os, sys
import numpy as np
if sys.argv[1] == "cli":  # What `python -m rew_jax` does before a stage starts JAX.
  from rew_jax import xla_cpu
  xla_cpu.set_default_flags()
elif sys.argv[1] == "import":  # What a library user's `import rew_jax` does.
  import rew_jax
import jax, jax.numpy as jnp
x = np.random.default_rng(0).normal(size=(32, 64)).astype(np.float32)
w = np.random.default_rng(1).normal(size=(64, 1000)).astype(np.float32)
f = jax.jit(lambda a, b: jax.nn.log_softmax(a @ b))
text = f.lower(x, w).compile().as_text()
print(json.dumps({"ynn": "ynn" in text.lower(), "out": np.asarray(f(x, w)).tolist(),
                  "flags": os.environ.get("XLA_FLAGS", "")}))
"""


def run_probe(mode, **env):
  proc = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", **env),
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_flags_are_added_once_and_never_override_the_user():
  flag = "--xla_cpu_experimental_ynn_fusion_type="
  assert xla_cpu.with_default_flags("") == flag
  assert xla_cpu.with_default_flags("--xla_force_host_platform_device_count=8") == (
      "--xla_force_host_platform_device_count=8 " + flag)
  mine = "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT"
  assert xla_cpu.with_default_flags(mine) == mine
  assert xla_cpu.with_default_flags(xla_cpu.with_default_flags("")) == flag
  env = {"XLA_FLAGS": "--a=1"}
  xla_cpu.set_default_flags(env)
  assert env["XLA_FLAGS"] == "--a=1 " + flag
  env = {"REW_JAX_XLA_CPU_DEFAULTS": "0"}
  xla_cpu.set_default_flags(env)
  assert "XLA_FLAGS" not in env


def test_the_compiler_follows_the_flags_and_the_numbers_do_not_change():
  env = {"XLA_FLAGS": ""}
  default = run_probe("plain", **env)
  tuned = run_probe("cli", **env)
  assert default["ynn"] and not tuned["ynn"]  # YNNPACK fusions gone from the executable.
  np.testing.assert_allclose(tuned["out"], default["out"], rtol=1e-5, atol=1e-5)
  kept = run_probe("cli", REW_JAX_XLA_CPU_DEFAULTS="0", **env)
  assert kept["ynn"]


def test_importing_rew_jax_compiles_as_the_cli_does():
  """A library user who imports rew_jax gets the CLI's flags and its numbers, bit for bit;
  REW_JAX_XLA_CPU_DEFAULTS=0 keeps XLA's own there too."""
  env = {"XLA_FLAGS": ""}
  cli, imported = run_probe("cli", **env), run_probe("import", **env)
  assert imported["flags"] == cli["flags"] == xla_cpu.with_default_flags("")
  assert not imported["ynn"] and imported["out"] == cli["out"]
  assert run_probe("import", REW_JAX_XLA_CPU_DEFAULTS="0", **env)["ynn"]
