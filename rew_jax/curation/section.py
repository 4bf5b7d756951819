"""The `curation` config section: its keys, what a curation reads and writes, its backend.

    c = section.default_config("gemini")   # the runner's keys + `gemini`, the backend's options
    config.check_keys(c, section.schema(c), "curation")   # what the `curate` stage does
    paths = section.paths_of(c, workdir)   # candidates, out (records), curation (the rest), ...
    backend = section.make_backend("simulated", malformed=0.0)

The section's schema comes from its components: the runner's keys (`default_config`), the
`dedup` block (`rew_jax.curation.dedup`) and, for the chosen backend and every other backend
a config names (`curation.simulated` beside `backend="top1_candidate"`), that backend's
`default_config()`. The `curate` stage checks the section once against it
(`rew_jax.config.check_keys`: an unknown key is a ConfigError naming it and the closest
valid ones); a backend constructed directly from Python checks its options the same way.

Paths are the section's or, by default, the workdir's (`rew_jax.workdir`), local or `gs://`:
candidates from W/candidates, records to W/records, state, journals, dead letters and the
report to W/curation (beside a custom `out_dir=D`: D for the records, D_curation for the
rest, so that several curations share a workdir).
"""

from __future__ import annotations

import json
import os

from rew_jax import config as config_lib
from rew_jax import records as records_lib
from rew_jax import registry
from rew_jax import storage
from rew_jax import workdir as workdir_lib
from rew_jax.curation import dedup as dedup_lib
from rew_jax.curation.backends.base import Backend

NAME = "curation"


def _runner_config() -> config_lib.ConfigDict:
  """The keys every curation has, whatever its backend."""
  c = config_lib.ConfigDict()
  c.backend = "simulated"
  c.mode = "one_call"            # one_call | multi_call | direct (the ablation)
  # What correction prompts show beside the candidate names: full (caption + Wikipedia
  # summaries) | caption | summaries | none; "": the mode's own (full; none for direct).
  c.context = ""
  c.num_qa = 3
  c.concurrency = 8              # Records in flight at once.
  c.rate_limit_per_s = 0.0       # Calls per second over all threads; 0: unlimited.
  c.timeout_s = 60.0             # Per call.
  c.max_attempts = 6             # Per call, on 429/5xx/timeouts.
  c.backoff_initial_s = 1.0
  c.backoff_max_s = 60.0
  c.parse_retries = 1            # Re-asks after an unparsable reply.
  c.summary_chars = 400          # Wikipedia text per candidate in the prompt; 0: none.
  # Web images that are near-copies of evaluation images are left out before the LLM call
  # and counted in the report (rew_jax/curation/dedup.py). Relative paths are under the
  # image root. Empty image_dirs and references: no deduplication.
  c.dedup = dedup_lib.default_config()
  c.prompts = config_lib.ConfigDict(dict(verify="", rationale="", qa="", one_call="",
                                         direct=""))  # "" keeps the default template.
  c.candidates_dir = ""          # Default: W/candidates.
  c.out_dir = ""                 # Default: W/records (state and report: W/curation).
  c.kb_source = ""               # Default: the candidates manifest's, else W/world/kb/...
  c.kb_index_dir = ""            # Default: the candidates manifest's, else W/kb.
  c.image_root = ""              # For relative image paths; default: W/world.
  c.truth_path = ""              # Default: W/world/truth/web_truth.jsonl when present.
  c.skip_bad_inputs = False
  c.price_per_mtok_in = 0.0      # USD per million tokens, for the report's cost estimate.
  c.price_per_mtok_out = 0.0
  c.report_examples = 6
  c.source = "webli"             # Written into the manifest.
  # online: one HTTP call per prompt; batch: the service's batch jobs (backend openai: the
  # OpenAI Batch API; gemini: Gemini batch prediction; rew_jax/curation/batch.py). Same records.
  c.mode_of_calls = "online"
  c.batch_price_per_mtok_in = -1.0   # USD per million tokens in batch; < 0: half online.
  c.batch_price_per_mtok_out = -1.0
  c.batch_completion_window = "24h"
  c.batch_max_requests = 50000     # Per job input file (the service's limits) ...
  c.batch_max_bytes = 190_000_000  # ... more pending requests make several jobs.
  c.batch_poll_initial_s = 5.0     # Job status polls back off from this ...
  c.batch_poll_max_s = 300.0       # ... to this.
  return c


def backend_class(name: str) -> type[Backend]:
  """The registered backend `name` (an UnknownNameError lists the known ones)."""
  return registry.CURATION_BACKENDS.get(name)


def default_config(backend: str = "simulated") -> config_lib.ConfigDict:
  """The `curation` section with every key a config may set, for `backend`: the runner's
  keys and, when the backend declares options, their group `curation.<backend>`."""
  c = _runner_config()
  c.backend = backend
  options = backend_class(backend).default_config()
  if len(options):
    c[backend] = options
  return c


def schema(c) -> config_lib.ConfigDict:
  """What the section `c` may hold: `default_config(c.backend)` and the options group of
  every other backend it names."""
  out = default_config(c.get("backend", "simulated"))
  for key, value in c.items():
    if (key not in out and isinstance(value, config_lib.ConfigDict)
        and key in registry.CURATION_BACKENDS):
      out[key] = backend_class(key).default_config()
  return out


def paths_of(c, workdir: str) -> dict[str, str]:
  """Inputs and outputs of a curation: the section's paths, else the workdir's."""
  wd = workdir_lib.Workdir(workdir)
  return {
      "world": wd.world,
      "candidates": c.candidates_dir or wd.candidates,
      "out": c.out_dir or wd.records(),
      "curation": workdir_lib.curation_dir_for(c.out_dir) if c.out_dir else wd.curation(),
      "kb_source": c.kb_source or wd.world_kb,
      "kb_index": c.kb_index_dir or wd.kb_index,
      "truth": c.truth_path or wd.world_truth,
  }


def backend_options(config, paths: dict[str, str] | None = None) -> dict:
  """The options of the configured backend (`config.curation.<backend>`). An empty
  `kb_path` option (the KB a simulated LLM knows; "none" for none) defaults to the
  curation's KB."""
  c = config.curation
  group = c.get(c.backend, None)
  opts = dict(group.to_dict() if hasattr(group, "to_dict") else group or {})
  if paths and "kb_path" in opts and not opts["kb_path"]:
    opts["kb_path"] = paths["kb_source"]
  return opts


def make_backend(name: str, **options) -> Backend:
  """The backend `name` with `options` laid over its `default_config()`."""
  return backend_class(name)(**options)


def backend_from_config(config, paths: dict[str, str] | None = None) -> Backend:
  """The backend a config's `curation` section names, with its options."""
  return make_backend(config.curation.backend, **backend_options(config, paths))


# Keys that do not change a record: how fast and how observably it is made.
_NOT_HASHED = ("concurrency", "rate_limit_per_s", "report_examples", "timeout_s",
               "max_attempts", "backoff_initial_s", "backoff_max_s",
               # How the calls are made, not what they answer: the same records.
               "mode_of_calls", "batch_price_per_mtok_in", "batch_price_per_mtok_out",
               "batch_completion_window", "batch_poll_initial_s", "batch_poll_max_s",
               "batch_max_requests", "batch_max_bytes")


def hashed(config) -> dict:
  """The part of the section that decides the records (not concurrency or rate limits)."""
  c = config.curation.to_dict()
  for k in _NOT_HASHED:
    c.pop(k, None)
  # Keys added since: left at their neutral value they leave older workdirs' hash unchanged.
  for k, neutral in (("context", ""),):
    if c.get(k) == neutral:
      c.pop(k)
  if not dedup_lib.enabled(c.get("dedup")):
    c.pop("dedup", None)
  return c


def curation_hash(config) -> str:
  """The hash of `hashed(config)`, stored in the manifest and the curation state."""
  return records_lib.config_hash(hashed(config))


def dedup_config(c, image_root: str):
  """`curation.dedup` with its relative paths under the image root (None when absent)."""
  d = c.get("dedup", None)
  if not dedup_lib.enabled(d):
    return None

  def under(p):
    if not p or os.path.isabs(p) or storage.is_remote(p):
      return p
    return os.path.join(image_root, p)

  d = config_lib.ConfigDict(d.to_dict() if hasattr(d, "to_dict") else dict(d))
  d.image_dirs = tuple(under(p) for p in d.image_dirs)
  d.references = tuple(under(p) for p in d.references)
  d.reference_image_dir = under(d.reference_image_dir)
  return d


def candidates_manifest(paths: dict[str, str]) -> dict:
  path = os.path.join(paths["candidates"], "manifest.json")
  return json.loads(storage.read_text(path)) if storage.isfile(path) else {}


def kb_paths(c, paths: dict[str, str], *, read_manifest: bool = True) -> tuple[str, str]:
  """(Wiki6M file, index dir): from the config, else the ones the candidates step used
  (its manifest; `read_manifest=False`, as a dry run does: the workdir's defaults)."""
  kb = candidates_manifest(paths).get("kb", {}) if read_manifest else {}
  return (c.kb_source or kb.get("path") or paths["kb_source"],
          c.kb_index_dir or kb.get("index_dir") or paths["kb_index"])
