"""XLA:CPU flags that the command line and the benchmarks set before JAX starts.

XLA:CPU (jaxlib 0.10) hands dots to YNNPACK by default. For the skinny matmuls of decoding,
GiT's output layer on one token per beam ([32, 256] x [256, 30522] at beam 4, batch 8),
YNNPACK's fused dot took 11.2 of a 16.4 ms decoder step in a profile on the 2-core machine;
with XLA's own (Eigen) dots the same step took 9.1 ms, beam-4 decoding of the quick
benchmark model went from 122 to 83 ms, and its train step from 190 to 183 ms
(benchmarks/model.py, docs/model.md). So `python -m rew_jax` turns YNNPACK's dot fusions off.

The flags only concern CPU compilation (GPU and TPU compilers ignore them), are added to
`XLA_FLAGS` only where the user has not set the same flag, and act only if set before JAX
starts its CPU backend. `import rew_jax` calls `set_default_flags()` (rew_jax/__init__.py), so
a program that imports rew_jax before its first JAX computation compiles as the CLI does
(tests/test_xla_cpu.py); REW_JAX_XLA_CPU_DEFAULTS=0 keeps XLA's own defaults.
"""

from __future__ import annotations

import os
from typing import MutableMapping

DEFAULT_FLAGS = {
    # Empty: no op kinds go to YNNPACK; dots use XLA's own CPU emitter (Eigen).
    "xla_cpu_experimental_ynn_fusion_type": "",
}


def with_default_flags(xla_flags: str) -> str:
  """`xla_flags` (an XLA_FLAGS value) plus each default flag it does not set already."""
  given = {part.lstrip("-").split("=", 1)[0] for part in xla_flags.split()}
  added = [f"--{name}={value}" for name, value in DEFAULT_FLAGS.items() if name not in given]
  return " ".join([xla_flags.strip(), *added]).strip()


def set_default_flags(environ: MutableMapping[str, str] | None = None) -> None:
  """Adds DEFAULT_FLAGS to XLA_FLAGS in `environ` (os.environ), unless
  REW_JAX_XLA_CPU_DEFAULTS=0. Call it before the first JAX computation."""
  environ = os.environ if environ is None else environ
  if environ.get("REW_JAX_XLA_CPU_DEFAULTS", "1") == "0":
    return
  environ["XLA_FLAGS"] = with_default_flags(environ.get("XLA_FLAGS", ""))
