"""`top1_candidate`: no LLM at all; every image is labelled with its top-1 retrieved candidate.

This is the Entity-WebLI baseline the paper improves on: the records it produces carry
curation_status "candidate", no rationale and no QA, and train the baseline model.
"""

from __future__ import annotations

from rew_jax import registry
from rew_jax.curation.backends.base import Backend


@registry.CURATION_BACKENDS.register("top1_candidate")
class Top1Candidate(Backend):
  name = "top1_candidate"
  uses_llm = False

  def __init__(self, **kwargs):
    self.options(kwargs)  # It declares none: any is an error.
