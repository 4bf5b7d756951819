"""`python -m rew_jax world`: generate the embedded default world into W/world.

    python -m rew_jax world --workdir W [--config configs/demo.py] [--config.world.KEY=VALUE]

Without --config the defaults of `rew_jax.data.synthetic.default_config()` are used; with a
config file, its `world` section. A world already made by the same section is reused
(`--force` regenerates it); one made by another section is regenerated.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Sequence

from rew_jax import config as config_lib
from rew_jax import workdir as workdir_lib
from rew_jax.data import synthetic
from rew_jax.stages import base

SECTION = "world"


def ensure(config, wd: workdir_lib.Workdir, *, force: bool = False,
           progress: base.Progress | None = None) -> dict:
  """W/world for `config.world`: reused when its stamp matches, else (re)generated."""
  progress = progress or base.Progress()
  section = config_lib.section(config, SECTION, synthetic.default_config())
  digest = workdir_lib.fingerprint(section)
  if not force and workdir_lib.is_current(wd.world, digest):
    with open(os.path.join(wd.world, "world.json")) as f:
      summary = json.load(f)
    progress.line(f"world: reusing {wd.world} (same config)")
    return summary
  if os.path.isdir(wd.world):
    shutil.rmtree(wd.world)  # Made by another config (or torn): nothing in it is reusable.
  summary = synthetic.generate(section, wd.world)
  workdir_lib.write_stamp(wd.world, SECTION, digest)
  progress.line(synthetic.format_summary(summary))
  progress.line(f"world: written to {wd.world} in {summary['seconds']} s")
  return summary


def main(argv: Sequence[str]) -> int:
  p = base.parser(SECTION, __doc__)
  base.add_config(p, sections=SECTION)
  base.add_workdir(p, "output: WORKDIR/world")
  p.add_argument("--force", action="store_true", help="regenerate even when up to date")
  args, config = base.parse(p, argv, {SECTION: synthetic.default_config})
  ensure(config, workdir_lib.Workdir(args.workdir), force=args.force)
  return 0
