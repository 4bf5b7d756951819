"""Training metrics: a console progress bar, JSONL in the workdir, TensorBoard event files.

Every logged step writes one JSON line to `<workdir>/metrics.jsonl` (train and eval rows,
`"kind"` tells which) and the same scalars to TensorBoard under `<workdir>/tensorboard`.
The workdir may be a bucket (`gs://`): objects cannot be appended to, so there the JSONL
object is rewritten whole at each row (a few MB at most for a 600k-step run logged every
100 steps), starting from the rows a resumed run finds, and TensorBoard's event file is
uploaded whole at each of tensorboardX's flushes (every 2 minutes and at the end).
Throughput (steps/s, examples/s) is measured between log steps, from the end of the first
step (compilation and the first step's run excluded); MFU is the step's FLOPs (XLA's cost
analysis of the compiled step) per second over the devices' peak: `config.
peak_flops_per_device`, else a table of accelerators' spec sheets, else on CPU a matmul
probe run at start-up (`measure_cpu_peak`), never a typed-in CPU figure.
"""

from __future__ import annotations

import io
import json
import os
import time
from typing import Any, Mapping

import jax
import tqdm

from rew_jax import storage

# Dense bf16 peak FLOP/s per accelerator (public spec sheets). CPUs differ too much for a
# table: their peak is measured (`measure_cpu_peak`).
PEAK_FLOPS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v6 lite": 918e12, "NVIDIA H100": 989e12, "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
}
_cpu_peak: dict[str, float] = {}


def measure_cpu_peak(size: int = 1024, seconds: float = 0.5) -> float:
  """This host's float32 matmul FLOP/s, as XLA:CPU reaches it: the best of repeated
  `size`³ products on one device (XLA's thread pool spans every core) over ~`seconds`.
  Measured once per process."""
  if "flops" not in _cpu_peak:
    device = jax.local_devices(backend="cpu")[0]
    x = jax.device_put(jax.numpy.ones((size, size), jax.numpy.float32), device)
    matmul = jax.jit(lambda a: a @ a)
    matmul(x).block_until_ready()  # Compile.
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
      start = time.perf_counter()
      matmul(x).block_until_ready()
      best = min(best, time.perf_counter() - start)
    _cpu_peak["flops"] = 2 * size**3 / best
  return _cpu_peak["flops"]


def peak_flops_per_device(config=None) -> float | None:
  """Peak FLOP/s of one device: the config's, the spec sheet's, or (CPU) the measured host
  peak shared by the host's CPU devices (fake devices split the same cores)."""
  if config is not None and config.get("peak_flops_per_device"):
    return float(config.peak_flops_per_device)
  device = jax.devices()[0]
  if device.platform == "cpu":
    return measure_cpu_peak() / jax.local_device_count()
  for name, flops in PEAK_FLOPS.items():
    if device.device_kind.lower().startswith(name.lower()):
      return flops
  return None


class _ObjectStoreEventFile:
  """An event file in a bucket, written through rew_jax.storage: buffered, and uploaded whole
  at each flush. It stands in for tensorboardX's own gs:// writer, which goes around epath
  and uploads once more when garbage-collected after `close`, by then maybe without a store
  to reach (a 2-minute retry at interpreter exit)."""

  def __init__(self, path: str):
    self.path, self._buffer, self._closed = path, io.BytesIO(), False

  def write(self, data: bytes) -> None:
    self._buffer.write(data)

  def flush(self) -> None:
    if not self._closed:
      storage.write_bytes(self.path, self._buffer.getvalue())

  def close(self) -> None:
    self.flush()
    self._closed = True


class _ObjectStoreEvents:
  """tensorboardX's writer-factory interface for gs:// log directories."""

  def open(self, path: str) -> _ObjectStoreEventFile:
    return _ObjectStoreEventFile(path)

  def directory_check(self, path: str) -> None:
    del path  # Object stores have no directories to make.


class Writer:
  """Progress bar + JSONL + TensorBoard; only process 0 writes files."""

  def __init__(self, workdir: str, *, config=None, total_steps: int, start_step: int = 0):
    self.main = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._file = self._rows = None
    if self.main and storage.is_remote(self.path):
      self._rows = storage.read_text(self.path) if storage.exists(self.path) else ""
    elif self.main:
      self._file = open(self.path, "a", encoding="utf-8")
    self._tb = None
    if self.main:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
      record_writer.register_writer_factory("gs", _ObjectStoreEvents())
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    self._bar = tqdm.tqdm(total=total_steps, initial=start_step, disable=not self.main,
                          dynamic_ncols=True, desc="train")
    self._last_step, self._last_time = start_step, None
    self.step_flops: float | None = None
    self.peak = peak_flops_per_device(config)

  def note_compiled(self, step: int, step_flops: float | None, compile_seconds: float) -> None:
    """Called once the first step (`step`) has finished running: throughput is measured
    from here on, so the next log's rate counts the steps after it in their own time."""
    self.step_flops = step_flops
    self._last_step, self._last_time = step, time.time()
    self._write({"kind": "compile", "step": step, "seconds": round(compile_seconds, 3),
                 "step_flops": step_flops})

  def log_train(self, step: int, scalars: Mapping[str, float], *, examples: int) -> None:
    row = {"kind": "train", "step": step, **scalars}
    now = time.time()
    if self._last_time is not None and step > self._last_step:
      dt, steps = now - self._last_time, step - self._last_step
      row["steps_per_s"] = steps / dt
      row["examples_per_s"] = examples / dt if examples else None
      if self.step_flops and self.peak:
        row["mfu"] = self.step_flops * steps / dt / (self.peak * jax.device_count())
    self._last_step, self._last_time = step, now
    self._write(row)
    self._bar.update(step - self._bar.n)
    self._bar.set_postfix(loss=f"{scalars['loss']:.4f}", refresh=False)

  def log_eval(self, step: int, name: str, results: Mapping[str, Any]) -> None:
    self._write({"kind": "eval", "step": step, "name": name, **results})
    self._bar.write(f"step {step} {name}: " + ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in results.items()))

  def _write(self, row: dict) -> None:
    if not self.main:
      return
    if self._file is not None:
      self._file.write(json.dumps(row) + "\n")
      self._file.flush()
    else:  # An object store: no appends, the object is replaced whole.
      self._rows += json.dumps(row) + "\n"
      storage.write_text(self.path, self._rows)
    prefix = "eval/" + row["name"] + "/" if row["kind"] == "eval" else row["kind"] + "/"
    for key, value in row.items():
      if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
        self._tb.add_scalar(prefix + key, value, row["step"])

  def close(self) -> None:
    self._bar.close()
    if self._file is not None:
      self._file.close()
    if self._tb is not None:
      self._tb.close()


def read(workdir: str) -> list[dict]:
  text = storage.read_text(os.path.join(workdir, "metrics.jsonl"))
  return [json.loads(line) for line in text.splitlines() if line.strip()]
