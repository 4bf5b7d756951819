"""The local Gemma backend: its micro-batcher always; the model only with the gemma extra."""

import importlib.util
import threading

import pytest

from rew_jax.curation.backends import base
from rew_jax.curation.backends.gemma import GemmaLocal, MicroBatcher
from rew_jax.errors import ConfigError

HAS_GEMMA = importlib.util.find_spec("gemma") is not None


def test_micro_batcher_batches_concurrent_requests():
  seen = []

  def fn(batch):
    seen.append(list(batch))
    return [x * 10 for x in batch]

  batcher = MicroBatcher(fn, batch_size=4, wait_s=0.2)
  results = {}
  start = threading.Barrier(8)

  def call(i):
    start.wait()
    results[i] = batcher(i, timeout_s=10)

  threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  batcher.close()
  assert results == {i: i * 10 for i in range(8)}
  assert max(batcher.batches) == 4 and sum(batcher.batches) == 8
  assert sorted(x for b in seen for x in b) == list(range(8))


def test_micro_batcher_hands_errors_to_every_waiter():
  def fn(batch):
    raise RuntimeError("device out of memory")

  batcher = MicroBatcher(fn, batch_size=2, wait_s=0.01)
  with pytest.raises(RuntimeError, match="out of memory"):
    batcher("x", timeout_s=5)
  batcher.close()


@pytest.mark.skipif(HAS_GEMMA, reason="the gemma extra is installed")
def test_without_the_extra_the_error_says_how_to_install():
  with pytest.raises(base.BackendError, match=r"rew_jax\[gemma\]"):
    GemmaLocal(checkpoint_dir="/nonexistent", tokenizer_path="/nonexistent")


def test_gemma_options_are_checked():
  with pytest.raises(ConfigError, match=r"curation.gemma.checkpoint; closest valid keys: "
                     r"checkpoint_dir"):
    GemmaLocal(checkpoint="x")


@pytest.mark.skipif(not HAS_GEMMA, reason="the gemma extra is not installed "
                    "(pip install 'rew_jax[gemma]'; it pulls TensorFlow, so CI leaves it out)")
def test_gemma_needs_local_paths():
  with pytest.raises(base.BackendError, match="checkpoint_dir and gemma.tokenizer_path"):
    GemmaLocal()
