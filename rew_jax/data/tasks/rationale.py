"""The rationale task: a fixed instruction → the curator's visually grounded rationale."""

from rew_jax import registry
from rew_jax.data.tasks import base


@registry.TASKS.register("rationale")
class Rationale(base.Task):
  """Records with a non-empty rationale."""

  @classmethod
  def default_config(cls):
    return dict(super().default_config(), prompt="why is this the entity?")

  def eligible(self, record):
    return bool(record.rationale)

  def example(self, record, rng):
    return {"prompt": self.config.prompt, "target": record.rationale}
