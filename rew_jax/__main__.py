"""Command line: `python -m rew_jax STAGE [--config FILE.py:arg] [--workdir DIR] ...`.

Stage NAME lives in `rew_jax/stages/NAME.py` and exposes `main(argv) -> int`; this file
only dispatches (the `rew-jax` console command is the same). A stage whose module is not
part of this installation exits with a one-line message.
User errors (`rew_jax.errors.UserError`) print one line, never a traceback; so does a
storage request that failed past its retries (`rew_jax.storage.StorageError`, exit 3: the
same command resumes).

absl flags are marked parsed here, as `absl.app` would: Grain reads one when it starts
worker processes (`input.num_workers > 0`) and raises on unparsed flags. The stages have
their own argparse options, so absl parses only the program name. XLA:CPU's flags are set
here too, before a stage starts JAX (`rew_jax.xla_cpu`).
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

from absl import flags

from rew_jax import storage
from rew_jax import xla_cpu
from rew_jax.errors import StageUnavailableError, UserError


STAGES = {
    "demo": "run the whole method on the embedded default world: world → candidates → "
            "curation → records → train (baseline and REW) → OVEN evaluation → report",
    "world": "generate the embedded default world (KB, web images with noisy captions, OVEN "
             "files)",
    "candidates": "Entity-WebLI step: retrieve top-k candidate entities for each web caption",
    "curate": "LLM curation: verify/correct entities, write rationales and QA → REW records",
    "records": "inspect REW record shards, or make them from OVEN files",
    "train": "train a GiT encoder-decoder on REW records (multi-task: entity, rationale, QA)",
    "eval": "evaluate a checkpoint (OVEN, zero-shot, kNN) or score OVEN prediction files",
    "plot": "write a PNG of the loss and evaluation curves of training runs",
}


def stage_module(name: str) -> str:
  """Stage NAME lives in rew_jax/stages/NAME.py."""
  return f"rew_jax.stages.{name}"


def _usage() -> str:
  width = max(map(len, STAGES))
  lines = ["usage: python -m rew_jax STAGE [options]   (STAGE --help for its options)", "",
           "stages:"]
  lines += [f"  {name:<{width}}  {help_text}" for name, help_text in STAGES.items()]
  return "\n".join(lines)


def load_stage(name: str):
  """Imports the stage's module; a missing module is a StageUnavailableError."""
  module = stage_module(name)
  try:
    return importlib.import_module(module)
  except ModuleNotFoundError as e:
    # Only the stage's own module being absent means "not part of this installation"; a
    # missing third-party dependency inside it is a real error and keeps its traceback.
    if e.name and module.startswith(e.name) and e.name.startswith("rew_jax"):
      raise StageUnavailableError(
          f"stage {name!r} is not available in this installation of rew_jax "
          f"(module {module} is missing)") from None
    raise


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not flags.FLAGS.is_parsed():
    flags.FLAGS([sys.argv[0] or "rew_jax"])
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(_usage())
    return 0 if argv else 2
  name, rest = argv[0], argv[1:]
  if name not in STAGES:
    print(f"error: unknown stage {name!r}; stages: {', '.join(STAGES)}", file=sys.stderr)
    return 2
  xla_cpu.set_default_flags()  # Before any stage starts JAX (see rew_jax/xla_cpu.py).
  try:
    module = load_stage(name)
    return int(module.main(rest) or 0)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except storage.StorageError as e:
    print(f"error: storage did not answer after its retries: {e}; rerun the same command "
          "to resume", file=sys.stderr)
    return 3


if __name__ == "__main__":
  sys.exit(main())
