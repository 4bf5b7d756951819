"""The QA task: one of the record's questions (drawn) → its answer."""

from rew_jax import registry
from rew_jax.data.tasks import base


@registry.TASKS.register("qa")
class QA(base.Task):
  """Records with at least one question–answer pair."""

  def eligible(self, record):
    return bool(record.qa)

  def example(self, record, rng):
    pair = record.qa[int(rng.integers(len(record.qa)))]
    return {"prompt": pair.question, "target": pair.answer}
