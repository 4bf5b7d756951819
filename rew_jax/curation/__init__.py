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

from rew_jax import registry as _registry

# Public name → the submodule that defines it.
_NAMES = {
    "curate": ".run",
    "curate_items": ".run",
    "Curator": ".core",
    "Item": ".core",
    "Outcome": ".core",
    "RateLimiter": ".core",
    "Settings": ".core",
    "to_record": ".core",
    "KBLookup": ".inputs",
    "candidate_shards": ".inputs",
    "read_items": ".inputs",
    "default_config": ".section",
    "make_backend": ".section",
    "FAILED": ".shards",
    "IncompleteRunError": ".shards",
    "Prompt": ".prompts",
    "Backend": ".backends.base",
    "BackendError": ".backends.base",
    "Reply": ".backends.base",
    "RequestRejected": ".backends.base",
    "TransientError": ".backends.base",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = _registry.lazy_names(__name__, _NAMES)
