"""Curation backends, registered by name in `rew_jax.registry.CURATION_BACKENDS`.

Importing this package registers all of them; none imports its client library (google-genai,
gemma) before it is constructed, so an absent optional extra only matters when chosen.
"""

from rew_jax.curation.backends import gemini  # noqa: F401
from rew_jax.curation.backends import gemma_local  # noqa: F401
from rew_jax.curation.backends import openai_compat  # noqa: F401
from rew_jax.curation.backends import simulated  # noqa: F401
from rew_jax.curation.backends import top1  # noqa: F401
