"""The local executor of curation: the shard engine's shards one after the other, the
records of each curated by a pool of `curation.concurrency` threads in this process.

    report = run.curate(config, workdir)                  # the `curate` stage, --runner local
    outcomes = run.curate_items(rows, backend, kb)        # a handful of records, no workdir

Run by the `curate` stage (`rew_jax/stages/curate.py`). The workdir may be local or `gs://`
(`rew_jax.storage`): its inputs and outputs are the `curation` section's paths or the
workdir's (`rew_jax.curation.section`). Exactly once and resumable as the engine makes it
(`rew_jax.curation.shards`): after `kill -9` at any moment a rerun of the same command
skips committed shards, reuses journaled outcomes and calls the LLM only for records
without one. A KB index in a bucket is worked on in a local mirror. Records whose calls
still fail transiently after all retries are not written: the run finishes the other
records, then raises `IncompleteRunError`; rerunning retries just those.
"""

from __future__ import annotations

import time
from typing import Iterable, Mapping

from rew_jax.curation import core
from rew_jax.curation import inputs
from rew_jax.curation import section
from rew_jax.curation import shards
from rew_jax.curation.backends.base import Backend


def curate(config, workdir: str, *, restart: bool = False, backend: Backend | None = None,
           verbose: bool = True) -> dict:
  """Runs (or resumes) the curation of the candidates into REW records; → the report.

  `backend`: an object to use instead of the one `config.curation` names (it must name
  the same one: the records carry its name). `restart` discards an earlier run's records.
  With `curation.mode_of_calls="batch"` the calls go through the service's batch jobs
  (`rew_jax.curation.batch`): the same records.
  """
  c = config.curation
  if c.get("mode_of_calls", "online") != "online":
    from rew_jax.curation import batch  # pylint: disable=g-import-not-at-top
    return batch.curate(config, workdir, restart=restart, backend=backend, verbose=verbose)
  plan = shards.plan(config, workdir, restart)
  if backend is None:
    backend = section.backend_from_config(config, plan.paths)
  start = time.time()
  progress = None
  try:
    todo = plan.todo()
    if todo:
      curator = core.Curator(backend, shards.open_kb(plan), core.Settings.from_config(c),
                             core.RateLimiter(c.rate_limit_per_s))
      if verbose:
        import tqdm  # pylint: disable=g-import-not-at-top
        progress = tqdm.tqdm(desc=f"curate ({c.backend})", unit=" records", mininterval=2)
      for i in todo:
        shards.curate_shard(plan, i, curator, concurrency=c.concurrency,
                            backend_name=backend.name, progress=progress)
  finally:
    if progress is not None:
      progress.close()
    backend.close()
  shards.write_manifest(plan)
  return shards.report(plan, seconds=time.time() - start)


def curate_items(items: Iterable[core.Item | Mapping], backend: Backend, kb,
                 settings: core.Settings | None = None, *, image_root: str = "",
                 concurrency: int = 1) -> list[core.Outcome]:
  """The outcomes of a few records, in input order, with no workdir, journal or records.

  `items`: `core.Item`s or candidates lines as dicts ({image_id, caption, image_path,
  candidates: [{entity_id, name, score}]}); `kb`: an `inputs.KBLookup`; relative image
  paths are under `image_root`. A record whose calls failed transiently after every retry
  gets the status `shards.FAILED`. `core.to_record(item, image, outcome, backend.name)`
  makes the REW record of one.
  """
  items = [it if isinstance(it, core.Item) else inputs.item_from_row(dict(it), index=n)
           for n, it in enumerate(items)]
  curator = core.Curator(backend, kb, settings or core.Settings())
  outcomes: list = [None] * len(items)
  for n, out in shards.curate_each(items, curator, image_root, concurrency=concurrency):
    outcomes[n] = out
  return outcomes
