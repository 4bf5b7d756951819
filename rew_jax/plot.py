"""`python -m rew_jax plot --workdir W [W2 ...]`: loss and evaluation curves as a PNG.

Reads `<workdir>/metrics.jsonl` (written by the train loop) of one or more runs and draws
training loss against steps, and the evaluation metrics logged along the way.
"""

from __future__ import annotations

import argparse
import os
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # Files only; no display.
import matplotlib.pyplot as plt  # noqa: E402

from rew_jax import metrics as metrics_lib  # noqa: E402
from rew_jax.errors import UserError  # noqa: E402

EVAL_KEYS = ("entity_score", "query_score", "final_score")


def plot_runs(runs: Mapping[str, str], out_path: str) -> str:
  """runs: label → workdir. Writes the PNG and returns its path."""
  fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(11, 4))
  for label, workdir in runs.items():
    if not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
      raise UserError(f"{workdir}: no metrics.jsonl (has it been trained?)")
    rows = metrics_lib.read(workdir)
    train = [r for r in rows if r["kind"] == "train"]
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label=label)
    for row in (r for r in rows if r["kind"] == "eval"):
      for key, value in row.items():
        if any(key.endswith("/" + k) and "strict" not in key for k in EVAL_KEYS):
          ax_eval.bar(f"{label}\n{key.split('/')[-1]}", value)
  ax_loss.set(xlabel="step", ylabel="training loss", title="loss")
  ax_loss.legend()
  ax_eval.set(ylabel="OVEN HM (%)", title="evaluation (last step)")
  ax_eval.tick_params(axis="x", labelsize=7)
  fig.tight_layout()
  fig.savefig(out_path, dpi=100)
  plt.close(fig)
  return out_path


def main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(prog="python -m rew_jax plot", description=__doc__)
  parser.add_argument("--workdir", nargs="+", required=True, help="one or more train workdirs")
  parser.add_argument("--out", default="", help="PNG path (default: <first workdir>/curves.png)")
  args = parser.parse_args(argv)
  out = args.out or os.path.join(args.workdir[0], "curves.png")
  print(plot_runs({os.path.basename(os.path.normpath(w)): w for w in args.workdir}, out))
  return 0
