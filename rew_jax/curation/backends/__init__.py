"""Curation backends, one module per name in `rew_jax.registry.CURATION_BACKENDS`.

`backends/<name>.py` registers the backend `<name>` and is imported when a config first
chooses it; none imports its client library (google-genai, gemma) before it is constructed,
so an absent optional extra only matters when chosen.
"""
