"""`python -m rew_jax demo`: every stage of the method, in order, on the embedded world.

world → candidates (Entity-WebLI) → LLM curation (simulated) → REW records → train the
candidate-label baseline and the REW model → OVEN evaluation → report. Stages that are not
part of this version are listed as missing instead of failing the run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from typing import Sequence

from rew_jax import config as config_lib
from rew_jax.data import synthetic

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "demo.py")

# (stage, the module that implements it, how to run it alone) for the stages after the world.
LATER_STAGES = (
    ("candidates (Entity-WebLI retrieval)", "rew_jax.kb.candidates",
     "python -m rew_jax candidates --config configs/candidates_demo.py --workdir W"),
    ("LLM curation → REW records", "rew_jax.curation.run",
     "python -m rew_jax curate --config configs/curate_demo.py --workdir W"),
    ("training (baseline and REW)", "rew_jax.train",
     "python -m rew_jax train --config CONFIG --workdir W"),
    ("OVEN evaluation", "rew_jax.evaluators.oven",
     "python -m rew_jax eval oven --references REF --predictions PRED"),
)


def _module_exists(name: str) -> bool:
  try:
    return importlib.util.find_spec(name) is not None
  except ModuleNotFoundError:
    return False


def ensure_world(config, workdir: str) -> tuple[str, dict]:
  """Generates the world into workdir/world unless the same config already did."""
  world_dir = os.path.join(workdir, "world")
  summary_path = os.path.join(world_dir, "world.json")
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      existing = json.load(f)
    if existing.get("config") == config.to_dict():
      return world_dir, existing
  return world_dir, synthetic.generate(config, world_dir)


def main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(prog="python -m rew_jax demo", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  config_lib.add_config_arguments(parser, default=DEFAULT_CONFIG)
  args, config = config_lib.parse_stage_args(parser, argv)
  os.makedirs(args.workdir, exist_ok=True)

  print("== world ==")
  world_dir, summary = ensure_world(config.world, args.workdir)
  print(synthetic.format_summary(summary))
  print(f"world: {world_dir}")

  # Chaining candidates → curation → training → evaluation into one demo run is the
  # remaining part of the training issue; until then each stage runs on its own.
  print("\nnot yet chained by the demo (run each on its own):")
  for stage, module, command in LATER_STAGES:
    state = command if _module_exists(module) else "missing from this version"
    print(f"  - {stage}: {state}")
  return 0
