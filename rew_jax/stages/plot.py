"""`python -m rew_jax plot --workdir W [W2 ...]`: loss and evaluation curves as a PNG.

Reads each training run's metrics.jsonl; writes <first workdir>/curves.png unless --out.
"""

from __future__ import annotations

import os
from typing import Sequence

from rew_jax import plot
from rew_jax.stages import base


def main(argv: Sequence[str]) -> int:
  p = base.parser("plot", __doc__)
  p.add_argument("--workdir", nargs="+", required=True, help="one or more training runs")
  p.add_argument("--out", default="", help="PNG path (default: <first workdir>/curves.png)")
  args = p.parse_args(argv)
  out = args.out or os.path.join(args.workdir[0], "curves.png")
  print(plot.plot_runs({os.path.basename(os.path.normpath(w)): w for w in args.workdir}, out))
  return 0
