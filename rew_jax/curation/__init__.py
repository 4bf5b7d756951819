"""LLM curation: verify or correct each image's entity, write a rationale and QA → REW records.

The names research code uses, each imported on first use, so that `import rew_jax.curation`
pulls in none of the optional clients (apache_beam, google-genai, gemma) nor the KB's
dependencies:

    from rew_jax import curation

    report = curation.curate(config, workdir)          # the local runner (--runner local)
    backend = curation.make_backend("simulated", malformed=0.0)
    kb = curation.KBLookup.open(kb_file, kb_index_dir)  # titles, summaries, name resolver
    outcomes = curation.curate_items(rows, backend, kb, curation.Settings(num_qa=1))
    curation.Curator(backend, kb, curation.Settings()).curate(item, image_bytes)

    section = curation.default_config("gemini")        # a config's `curation` section

`rows` are candidates lines (dicts: image_id, caption, image_path, candidates) or
`curation.Item`s; an outcome (`curation.Outcome`) holds the status, entity, rationale, QA
and the call counts. A new backend subclasses `curation.Backend` (see
`rew_jax/curation/backends/base.py`). The Beam executor is `rew_jax.curation.beam`
(extra `beam`); the modules are listed in docs/curation.md.
"""

import importlib

# Public name → the submodule that defines it. Resolved by name on first access (PEP 562):
# the submodules import each other, never this module's names, so no cycle arises.
_WHERE = {
    "curate": "run",
    "curate_items": "run",
    "Curator": "core",
    "Item": "core",
    "Outcome": "core",
    "RateLimiter": "core",
    "Settings": "core",
    "to_record": "core",
    "KBLookup": "inputs",
    "candidate_shards": "inputs",
    "read_items": "inputs",
    "default_config": "section",
    "make_backend": "section",
    "FAILED": "shards",
    "IncompleteRunError": "shards",
    "Prompt": "prompts",
    "Backend": "backends.base",
    "BackendError": "backends.base",
    "Reply": "backends.base",
    "RequestRejected": "backends.base",
    "TransientError": "backends.base",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
  if name not in _WHERE:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_WHERE))
