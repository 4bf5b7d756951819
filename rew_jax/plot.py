"""Loss and evaluation curves of training runs as a PNG (the `plot` stage and the demo).

Reads `<workdir>/metrics.jsonl` (written by the train loop) of one or more runs and draws
training loss against steps, and the evaluation metrics logged along the way.
"""

from __future__ import annotations

import io
import os
from typing import Mapping

import matplotlib

matplotlib.use("Agg")  # Files only; no display.
import matplotlib.pyplot as plt  # noqa: E402

from rew_jax import metrics as metrics_lib  # noqa: E402
from rew_jax import storage  # noqa: E402
from rew_jax.errors import UserError  # noqa: E402

EVAL_KEYS = ("entity_seen", "entity_unseen", "entity_score", "query_seen", "final_score")


def plot_runs(runs: Mapping[str, str], out_path: str) -> str:
  """runs: label → workdir. Writes the PNG and returns its path."""
  fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(11, 4))
  width = 0.8 / max(len(runs), 1)
  for i, (label, workdir) in enumerate(runs.items()):
    if not storage.exists(os.path.join(workdir, "metrics.jsonl")):
      raise UserError(f"{workdir}: no metrics.jsonl (has it been trained?)")
    rows = metrics_lib.read(workdir)
    train = [r for r in rows if r["kind"] == "train"]
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label=label)
    evals = [r for r in rows if r["kind"] == "eval"]
    if evals:  # The last evaluation: one bar per metric, runs side by side.
      last = {k.split("/")[-1]: v for k, v in evals[-1].items() if "strict" not in k}
      values = [last.get(k, 0.0) for k in EVAL_KEYS]
      ax_eval.bar([x + i * width for x in range(len(EVAL_KEYS))], values, width, label=label)
  ax_loss.set(xlabel="step", ylabel="training loss", title="loss")
  ax_loss.legend()
  ax_eval.set_xticks([x + width * (len(runs) - 1) / 2 for x in range(len(EVAL_KEYS))],
                     [k.replace("_", "\n") for k in EVAL_KEYS], fontsize=8)
  ax_eval.set(ylabel="OVEN top-1 / harmonic mean (%)", title="evaluation (last step)")
  ax_eval.legend()
  fig.tight_layout()
  png = io.BytesIO()  # Rendered in memory, then written through storage (local or gs://).
  fig.savefig(png, format="png", dpi=100)
  plt.close(fig)
  storage.write_bytes(out_path, png.getvalue())
  return out_path
