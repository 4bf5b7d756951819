"""Module-scoped tiny GiT shared by the model tests."""

import pytest

from gitcase import random_params, tiny_config, tiny_inputs


@pytest.fixture(scope="module")
def tiny():
  """(model, params, (images, prompts, targets)) of a tiny GiT, initialised once."""
  from rew_jax.models import git
  model = git.GiT(tiny_config())
  images, prompts, targets = tiny_inputs()
  params = random_params(model, images, prompts, targets)
  return model, params, (images, prompts, targets)
