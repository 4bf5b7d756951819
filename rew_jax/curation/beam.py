"""The curation step as an Apache Beam pipeline (extra `beam`): read → curate → write shards.

    python -m rew_jax curate --runner beam --config configs/curate_gemini.py --workdir W \
        [-- --runner=DirectRunner --direct_num_workers=8 --direct_running_mode=multi_threading]

On a cluster, pass the runner's options after `--`, e.g. Dataflow:
    -- --runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp \
       --max_num_workers=64 --sdk_container_image=IMAGE_WITH_REW_JAX
(or FlinkRunner / SparkRunner with their job endpoints). W must then be a path every worker
can write (a shared filesystem mount; ArrayRecord writes local paths).

The per-record logic is `rew_jax.curation.core.Curator`, exactly as in the local runner;
each worker builds its backend, KB lookup and rate limiter once in `DoFn.setup`
(`rate_limit_per_s` is then per worker). Output is the same as the local runner's: input
shard i → `records/rew-0000i.array_record`, records in input order, plus the journal of the
shard's outcomes (for the report) and, in the driver, the manifest and the report. Shards
already committed are skipped, so a failed job resumes where it stopped; a record's
transient failures beyond `max_attempts` fail its bundle, which the runner retries.
"""

from __future__ import annotations

import json
import os
import time
from typing import Sequence

from rew_jax import config as config_lib
from rew_jax import records as records_lib
from rew_jax import registry
from rew_jax import storage
from rew_jax.curation import core, inputs
from rew_jax.curation import report as report_lib
from rew_jax.curation import run


def _import_beam():
  try:
    import apache_beam as beam  # pylint: disable=g-import-not-at-top
  except ImportError:
    from rew_jax.errors import UserError  # pylint: disable=g-import-not-at-top
    raise UserError("the Beam pipeline needs apache-beam: pip install 'rew_jax[beam]'") from None
  return beam


def _context(config_dict: dict, workdir: str):
  config = config_lib.ConfigDict(config_dict)
  c = config.curation
  paths = run.paths_of(c, workdir)
  return config, c, paths, c.image_root or paths["world"]


def build(pipeline, config, workdir: str, todo: Sequence[tuple[int, str]]):
  """Adds read → curate → group by shard → write to `pipeline`; → PCollection of names."""
  beam = _import_beam()
  config_dict = config.to_dict()

  class CurateFn(beam.DoFn):
    def setup(self):
      cfg, c, paths, self.image_root = _context(config_dict, workdir)
      self.backend = run.make_backend(cfg, paths)
      kb = inputs.KBLookup.open(*run.kb_paths(c, paths))
      self.curator = core.Curator(self.backend, kb, core.Settings.from_config(c),
                                  core.RateLimiter(c.rate_limit_per_s))

    def process(self, element):
      shard_index, item = element
      try:
        image, mime = inputs.load_image(item, self.image_root, check=True)
      except inputs.BadImageError as e:  # Web data: a counted skip, never a record.
        yield shard_index, (item, core.bad_image_outcome(item, str(e)).to_json())
        return
      yield shard_index, (item, self.curator.curate(item, image, mime).to_json())

    def teardown(self):
      self.backend.close()

  class WriteShardFn(beam.DoFn):
    def setup(self):
      _, c, self.paths, self.image_root = _context(config_dict, workdir)
      self.backend_name = registry.CURATION_BACKENDS.get(c.backend).name

    def process(self, element):
      shard_index, pairs = element
      pairs = sorted(pairs, key=lambda p: p[0].index)
      items = [p[0] for p in pairs]
      outcomes = {p[0].index: core.Outcome.from_json(p[1]) for p in pairs}
      shard = items[0].shard
      journal_path = os.path.join(self.paths["curation"], run.JOURNAL_DIR, shard)
      tmp = f"{journal_path}.tmp-{os.getpid()}"
      with open(tmp, "w", encoding="utf-8") as f:
        for item in items:
          f.write(json.dumps(outcomes[item.index].to_json(), ensure_ascii=False) + "\n")
      os.replace(tmp, journal_path)
      name = records_lib.shard_name(shard_index)
      run.commit_shard(os.path.join(self.paths["out"], name), items, outcomes,
                       self.image_root, self.backend_name)
      yield name

  skip_bad = config.curation.skip_bad_inputs

  def read(element):
    shard_index, path = element
    for item in inputs.read_items(path, records_lib.SkipCounter() if skip_bad else None):
      yield shard_index, item

  return (pipeline
          | "ListShards" >> beam.Create(list(todo))
          | "ReadCandidates" >> beam.FlatMap(read)
          | "Spread" >> beam.Reshuffle()
          | "Curate" >> beam.ParDo(CurateFn())
          | "ByShard" >> beam.GroupByKey()
          | "WriteShard" >> beam.ParDo(WriteShardFn()))


def curate(config, workdir: str, *, pipeline_args: Sequence[str] = (), restart: bool = False
           ) -> dict:
  """Runs the pipeline over the shards not yet committed; then manifest + report."""
  beam = _import_beam()
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top
  c = config.curation
  paths = run.paths_of(c, workdir)
  for key in ("candidates", "out", "curation", "kb_index"):
    storage.require_local(paths[key], f"curation {key}")
  shards = inputs.candidate_shards(paths["candidates"])
  state = run.run_state(config, shards)
  journal_dir = os.path.join(paths["curation"], run.JOURNAL_DIR)
  os.makedirs(paths["curation"], exist_ok=True)
  run._check_state(os.path.join(paths["curation"], run.STATE_NAME), state, restart,  # pylint: disable=protected-access
                   paths["out"], journal_dir)
  names = [records_lib.shard_name(i) for i in range(len(shards))]
  todo = [(i, p) for i, p in enumerate(shards)
          if not os.path.exists(os.path.join(paths["out"], names[i]))]
  start = time.time()
  if todo:
    options = PipelineOptions(list(pipeline_args) or ["--runner=DirectRunner"])
    with beam.Pipeline(options=options) as p:
      build(p, config, workdir, todo)
  manifest = records_lib.describe_shards(paths["out"], names, source=c.source,
                                         curation_config_hash=state["config_hash"])
  manifest.save(paths["out"])
  settings = core.Settings.from_config(c)
  builder = report_lib.ReportBuilder(
      backend=c.backend, mode=settings.mode, truth_path=paths["truth"],
      price_in=c.price_per_mtok_in, price_out=c.price_per_mtok_out,
      num_examples=c.report_examples)
  skipped = records_lib.SkipCounter() if c.skip_bad_inputs else None
  for path in shards:
    done = run.read_journal(os.path.join(journal_dir, os.path.basename(path)))
    for item in inputs.read_items(path, skipped):
      if item.index in done:
        builder.add(item, done[item.index])
  report = builder.finish(manifest, skipped=skipped, seconds=time.time() - start)
  report_lib.write(report, paths["curation"], builder.chosen_examples(),
                   c.image_root or paths["world"])
  return report
