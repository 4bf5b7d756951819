"""Command line: `python -m rew_jax STAGE [--config FILE.py:arg] [--workdir DIR] ...`.

Each stage lives in its own module exposing `main(argv) -> int`; this file only dispatches.
A stage whose module is not part of this installation exits with a one-line message.
User errors (`rew_jax.errors.UserError`) print one line, never a traceback.
"""

from __future__ import annotations

import importlib
import sys
from typing import NamedTuple, Sequence

from rew_jax.errors import StageUnavailableError, UserError


class Stage(NamedTuple):
  module: str
  help: str
  provided_by: str  # What a user needs for the stage when it is missing.


STAGES = {
    "demo": Stage(
        "rew_jax.demo",
        "run the whole method on the embedded default world: world → candidates → curation "
        "→ records → train (baseline and REW) → OVEN evaluation → report",
        "the end-to-end demo"),
    "world": Stage(
        "rew_jax.data.synthetic",
        "generate the embedded default world (KB, web images with noisy captions, OVEN files)",
        "the embedded default world"),
    "candidates": Stage(
        "rew_jax.kb.candidates",
        "Entity-WebLI step: retrieve top-k candidate entities for each web caption",
        "the entity knowledge base and candidate retrieval"),
    "curate": Stage(
        "rew_jax.curation.run",
        "LLM curation: verify/correct entities, write rationales and QA → REW records",
        "LLM curation"),
    "records": Stage(
        "rew_jax.records",
        "inspect REW record shards (`records inspect DIR`)",
        "REW records and input pipelines"),
    "train": Stage(
        "rew_jax.train",
        "train a GiT encoder-decoder on REW records (multi-task: entity, rationale, QA)",
        "the training loop"),
    "eval": Stage(
        "rew_jax.evaluators.cli",
        "evaluate a checkpoint (OVEN, zero-shot, kNN) or score OVEN prediction files",
        "the evaluators"),
    "plot": Stage(
        "rew_jax.plot",
        "write a PNG of the loss and evaluation curves of a workdir",
        "training metrics"),
}


def _usage() -> str:
  width = max(map(len, STAGES))
  lines = ["usage: python -m rew_jax STAGE [options]   (STAGE --help for its options)", "",
           "stages:"]
  lines += [f"  {name:<{width}}  {stage.help}" for name, stage in STAGES.items()]
  return "\n".join(lines)


def load_stage(name: str):
  """Imports the stage's module; a missing module is a StageUnavailableError."""
  stage = STAGES[name]
  try:
    return importlib.import_module(stage.module)
  except ModuleNotFoundError as e:
    # Only the stage's own module (or its package) being absent means "not built yet";
    # a missing third-party dependency inside it is a real error and keeps its traceback.
    if e.name and stage.module.startswith(e.name):
      raise StageUnavailableError(
          f"stage {name!r} is not available in this version of rew_jax "
          f"(needs {stage.provided_by}: module {stage.module} is missing)") from None
    raise


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(_usage())
    return 0 if argv else 2
  name, rest = argv[0], argv[1:]
  if name not in STAGES:
    print(f"error: unknown stage {name!r}; stages: {', '.join(STAGES)}", file=sys.stderr)
    return 2
  try:
    module = load_stage(name)
    return int(module.main(rest) or 0)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
