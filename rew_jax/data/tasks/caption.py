"""The caption task: a fixed (possibly empty) prompt → the original web caption, for the
WebLI-captions baseline trained from the same records."""

from rew_jax import registry
from rew_jax.data.tasks import base


@registry.TASKS.register("caption")
class Caption(base.Task):
  """Records with a caption."""

  @classmethod
  def default_config(cls):
    return dict(super().default_config(), prompt="")

  def eligible(self, record):
    return bool(record.caption)

  def example(self, record, rng):
    return {"prompt": self.config.prompt, "target": record.caption}
