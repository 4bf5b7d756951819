"""Batches put on the devices ahead of the step that needs them, by a background thread.

    feed = DevicePrefetch(data_iter, lambda host: sharding.host_batch_to_global(host, mesh))
    for step in ...:
      state, metrics = step_fn(state, next(feed))   # the input work of step+1 overlaps step
    manager.save(step, state, feed)                 # the state after the batches handed out

The thread runs `next(data_iter)` (Grain's preprocessing) and the host → device transfer
while the main thread dispatches and runs the step: on a host whose cores the compiled step
does not keep busy, the input work then costs the loop nothing. Grain's own prefetching
overlaps the preprocessing but not the transfer, and not the work it leaves to the
consuming thread (batching, shared-memory copies from worker processes).

Checkpoints stay exact: with each batch the thread keeps the iterator's state right after
it, and `get_state()` returns that of the last batch handed out, not of those still queued,
so a resume reproduces the next batch. Errors (a bad record, the end of a finite pipeline)
are raised by `next()` at the step whose batch met them.
"""

from __future__ import annotations

import json
import queue
import threading
from typing import Any, Callable, Iterator

_END = object()


class DevicePrefetch:
  """Iterates `to_device(next(host_iter))`, `size` batches ahead, on a daemon thread.

  `host_iter` must not be used elsewhere once the first batch is asked for; restore its
  state before that (Grain's checkpoint handler restores the iterator itself). `get_state`
  returns bytes, the JSON form that Grain's orbax handler writes for a non-Grain iterator.
  """

  def __init__(self, host_iter: Iterator[Any], to_device: Callable[[Any], Any],
               size: int = 2):
    self._host_iter, self._to_device = host_iter, to_device
    self._queue: queue.Queue = queue.Queue(maxsize=max(1, size))
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._state = None  # The host iterator's state after the last batch handed out.
    self._done = False

  def _fill(self) -> None:
    try:
      while not self._stop.is_set():
        try:
          host = next(self._host_iter)
        except StopIteration:
          self._put((_END, None))
          return
        item = (self._to_device(host), self._host_iter.get_state())
        self._put(item)
    except BaseException as e:  # pylint: disable=broad-except  # Re-raised by next().
      self._put((e, None))

  def _put(self, item) -> None:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return
      except queue.Full:
        continue

  def __iter__(self) -> "DevicePrefetch":
    return self

  def __next__(self):
    if self._done:
      raise StopIteration
    if self._thread is None:
      self._state = self._host_iter.get_state()
      self._thread = threading.Thread(target=self._fill, name="device_prefetch", daemon=True)
      self._thread.start()
    batch, state = self._queue.get()
    if batch is _END:
      self._done = True
      raise StopIteration
    if isinstance(batch, BaseException):
      self._done = True
      raise batch
    self._state = state
    return batch

  def get_state(self) -> bytes:
    state = self._host_iter.get_state() if self._thread is None else self._state
    return json.dumps(state, indent=4).encode()

  def close(self) -> None:
    """Stops the thread (it may finish the batch it is making) and frees the queue."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=60)
    while not self._queue.empty():
      self._queue.get_nowait()
