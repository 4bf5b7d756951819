"""`python -m rew_jax train`: train a model on record shards (the recipes in configs/).

    python -m rew_jax train --config configs/git_large_rew.py --workdir W \
        --config.train.input.data_dir=W/records

Reads the config's `train` section (every key checked against `rew_jax.train.default_config`)
and trains in W itself: checkpoints in W/checkpoints, metrics in W/metrics.jsonl, evaluator
outputs in W/eval. A workdir with checkpoints resumes from the latest, with the exact next
batch; SIGTERM saves and exits 0 (on several hosts, all of them at the same step: see
"The multi-host contract" in docs/launching.md). A workdir trained under another model,
optimizer, loss, input or seed is refused, naming the keys that differ (the step count,
logging, checkpoint cadence and evaluators may change between runs).
"""

from __future__ import annotations

import logging
from typing import Sequence

from rew_jax import config as config_lib
from rew_jax import distributed
from rew_jax import train as train_lib
from rew_jax import workdir as workdir_lib
from rew_jax.errors import ConfigError
from rew_jax.stages import base

SECTION = "train"
# What a resumed run must share with the run that wrote its checkpoints.
RESUME_KEYS = ("seed", "model", "input", "optim", "loss", "init_from")


def resume_fields(section) -> dict:
  return {k: (section[k].to_dict() if hasattr(section[k], "to_dict") else section[k])
          for k in RESUME_KEYS if k in section}


def _flat(tree, prefix=""):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _flat(v, f"{prefix}{k}.")
  else:
    yield prefix[:-1], tree


def check_resume(section, run_dir: str) -> None:
  """Refuses a workdir whose checkpoints another config wrote; stamps a new one."""
  fields = resume_fields(section)
  digest = workdir_lib.fingerprint(fields)
  stamp = workdir_lib.read_stamp(run_dir)
  if stamp is None:
    workdir_lib.write_stamp(run_dir, SECTION, digest, config=fields)
    return
  if stamp["fingerprint"] != digest:
    old, new = dict(_flat(stamp.get("config", {}))), dict(_flat(fields))
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    raise ConfigError(
        f"{run_dir} holds a run trained with another config (differs in: "
        f"{', '.join(keys[:8]) or 'unknown keys'}{' ...' if len(keys) > 8 else ''}); use a "
        "new --workdir, or the same config to resume")


def main(argv: Sequence[str]) -> int:
  p = base.parser(SECTION, __doc__)
  base.add_config(p, required=True, sections=SECTION)
  base.add_workdir(p, "the run's directory (local or gs://): checkpoints, metrics, eval")
  args, config = base.parse(p, argv)
  section = config_lib.section(config, SECTION, train_lib.default_config(),
                               source=args.config_source)
  run_dir = workdir_lib.Workdir(args.workdir).train_run()
  # Several hosts: process 0 stamps a new workdir, the others then check that stamp (all
  # writing it at once would race on its temporary file).
  if distributed.process_index() == 0:
    check_resume(section, run_dir)
  distributed.barrier("train-stamp")
  if distributed.process_index() != 0:
    check_resume(section, run_dir)
  try:
    train_lib.train(section, args.workdir)
  except train_lib.Preempted as e:
    logging.getLogger(__name__).warning("%s", e)
  return 0
