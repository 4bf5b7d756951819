"""DevicePrefetch: the batches, their order and the iterator state of a Grain pipeline are
those of the pipeline read directly, while a thread keeps batches ready ahead."""

import json
import threading

import grain
import numpy as np
import pytest

from rew_jax.device_prefetch import DevicePrefetch


def pipeline(n=40, batch=4):
  ds = grain.MapDataset.range(n).shuffle(seed=3).map(lambda i: {"x": np.int32(i)})
  return iter(ds.to_iter_dataset().batch(batch, drop_remainder=True))


def test_same_batches_and_exact_state_while_running_ahead():
  direct = [b["x"].tolist() for b in pipeline()]
  seen = []
  feed = DevicePrefetch(pipeline(), lambda b: b["x"] * 10, size=3)
  for _ in range(4):
    seen.append(next(feed).tolist())
  threading.Event().wait(0.2)  # Let the thread fill its queue: 3 batches past the 4th.
  state = json.loads(feed.get_state())
  feed.close()
  assert seen == [[10 * x for x in b] for b in direct[:4]]
  # The state is the one after the 4th batch, not after the queued ones: a fresh pipeline
  # restored from it yields the 5th batch.
  resumed = pipeline()
  resumed.set_state(state)
  assert next(resumed)["x"].tolist() == direct[4]
  # Before the first batch, the state is the iterator's own.
  fresh = pipeline()
  assert json.loads(DevicePrefetch(fresh, lambda b: b).get_state()) == fresh.get_state()


def test_end_of_data_and_errors_reach_the_consumer_at_their_batch():
  feed = DevicePrefetch(pipeline(n=8), lambda b: b)
  assert len(list(feed)) == 2
  with pytest.raises(StopIteration):
    next(feed)

  def to_device(b):
    if b["x"].min() < 0:
      raise ValueError("record 7: bad")
    return b

  ds = grain.MapDataset.range(12).map(lambda i: {"x": np.int32(-1 if i == 9 else i)})
  feed = DevicePrefetch(iter(ds.to_iter_dataset().batch(4)), to_device)
  assert next(feed)["x"].tolist() == [0, 1, 2, 3]
  assert next(feed)["x"].tolist() == [4, 5, 6, 7]
  with pytest.raises(ValueError, match="record 7"):
    next(feed)
  feed.close()


def test_close_stops_a_thread_blocked_on_a_full_queue():
  feed = DevicePrefetch(pipeline(n=400, batch=1), lambda b: b, size=1)
  next(feed)
  feed.close()
  assert not feed._thread.is_alive()  # pylint: disable=protected-access
