"""`python -m rew_jax candidates`: the Entity-WebLI step, top-k KB entities per web caption.

    python -m rew_jax candidates --config configs/candidates_demo.py --workdir W

Reads the config's `candidates` section (defaults: `rew_jax.kb.candidates.default_config()`,
captions and KB of the embedded world in W/world). A config with a `world` section (a
pipeline config such as configs/demo.py) makes the world first when it is missing. Writes
W/candidates (shards + manifest) and builds the KB index in W/kb on first use. Candidates
made by the same section from the same inputs are reused; a different section starts over;
an interrupted run resumes at the next missing shard.
"""

from __future__ import annotations

import os
from typing import Sequence

from rew_jax import config as config_lib
from rew_jax import distributed
from rew_jax import storage
from rew_jax import workdir as workdir_lib
from rew_jax.errors import ConfigError
from rew_jax.kb import candidates as candidates_lib
from rew_jax.stages import base
from rew_jax.stages import world as world_stage

SECTION = "candidates"


def ensure(config, wd: workdir_lib.Workdir, *, progress: base.Progress | None = None) -> str:
  """W/candidates for `config.candidates` (and the world, when the config describes one)."""
  progress = progress or base.Progress()
  section = config_lib.section(config, SECTION, candidates_lib.default_config())
  main = distributed.process_index() == 0  # Several hosts: one writes the stamps (and world).
  if world_stage.SECTION in config and main:
    world_stage.ensure(config, wd, progress=progress)
  distributed.barrier("candidates-world")
  uses_world = section.data.format == "world" and not section.data.path
  if uses_world and not os.path.isdir(wd.world):
    raise ConfigError(
        f"{wd.world} does not exist: run `python -m rew_jax world --workdir {wd.root}` first, "
        "or point candidates.data.path at your captions")
  digest = workdir_lib.fingerprint(section, workdir_lib.stamp_of(wd.world) if uses_world
                                   else section.data.path)
  stamp = workdir_lib.read_stamp(wd.candidates)
  if stamp and stamp["fingerprint"] == digest and stamp.get("complete"):
    progress.line(f"candidates: reusing {wd.candidates} (same config and inputs)")
    return wd.candidates
  if main and stamp and stamp["fingerprint"] != digest:
    storage.rmtree(wd.candidates)  # Another config's candidates: none of them can be kept.
  if main and (not stamp or stamp["fingerprint"] != digest):
    workdir_lib.write_stamp(wd.candidates, SECTION, digest, complete=False)
  distributed.barrier("candidates-stamp")
  progress.header(SECTION)
  out = candidates_lib.run_candidates(section, wd.root, log=progress.line)
  # run_candidates returns once every host's shards and the manifest are written.
  if main and storage.isfile(f"{out}/manifest.json"):
    workdir_lib.write_stamp(wd.candidates, SECTION, digest, complete=True)
  return out


def main(argv: Sequence[str]) -> int:
  p = base.parser(SECTION, __doc__)
  base.add_config(p, sections="candidates (and world)")
  base.add_workdir(p, "output: WORKDIR/candidates (and the KB index in WORKDIR/kb)")
  args, config = base.parse(p, argv, {SECTION: candidates_lib.default_config})
  ensure(config, workdir_lib.Workdir(args.workdir))
  return 0
