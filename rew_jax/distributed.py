"""Multi-host start-up from the environment that the launch scripts set.

The launch scripts (launch/run_tpu.sh, launch/gpu_multihost.sh) describe the cluster in
environment variables; the training loop calls `initialize_from_env()` first thing, before any
JAX computation, and is otherwise unaware of how it was launched:

  REW_JAX_DISTRIBUTED=1          call jax.distributed.initialize() (unset or 0: single process)
  REW_JAX_COORDINATOR_ADDRESS    HOST:PORT of process 0's coordinator   } GPU hosts; on Cloud
  REW_JAX_NUM_PROCESSES          number of processes                    } TPU (and SLURM) JAX
  REW_JAX_PROCESS_ID             this process, 0 .. N-1                 } detects them itself
  JAX_LOCAL_DEVICE_IDS           devices of this process (read by JAX itself)

`python -m rew_jax` joins the job once its stage's arguments are parsed
(`stages.base.parse`), then `configure_logging()` sends Python and absl logging through
absl's handler, rew_jax's INFO on process 0 only; `process_index()` tells the
console output (progress lines and bars) whether it is process 0, without starting JAX's
backend in stages that never use it.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Mapping

from rew_jax.errors import ConfigError

# This process's index in the job: 0 until initialize_from_env joins a multi-process job.
_process = {"index": 0, "joined": False}

ENV_DISTRIBUTED = "REW_JAX_DISTRIBUTED"
ENV_COORDINATOR = "REW_JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "REW_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "REW_JAX_PROCESS_ID"


def _int_env(environ: Mapping[str, str], name: str, minimum: int) -> int | None:
  text = environ.get(name, "").strip()
  if not text:
    return None
  try:
    value = int(text)
  except ValueError:
    value = None
  if value is None or value < minimum:
    raise ConfigError(f"environment variable {name}={text!r}: expected an integer >= {minimum}")
  return value


def initialize_kwargs(environ: Mapping[str, str]) -> dict[str, Any] | None:
  """Keyword arguments for jax.distributed.initialize, or None for a single-process run."""
  flag = environ.get(ENV_DISTRIBUTED, "").strip()
  if flag in ("", "0"):
    return None
  if flag != "1":
    raise ConfigError(f"environment variable {ENV_DISTRIBUTED}={flag!r}: expected 0 or 1")
  kwargs: dict[str, Any] = {}
  coordinator = environ.get(ENV_COORDINATOR, "").strip()
  if coordinator:
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
      raise ConfigError(
          f"environment variable {ENV_COORDINATOR}={coordinator!r}: expected HOST:PORT")
    kwargs["coordinator_address"] = coordinator
  num_processes = _int_env(environ, ENV_NUM_PROCESSES, 1)
  if num_processes is not None:
    kwargs["num_processes"] = num_processes
  process_id = _int_env(environ, ENV_PROCESS_ID, 0)
  if process_id is not None:
    if num_processes is not None and process_id >= num_processes:
      raise ConfigError(f"environment variable {ENV_PROCESS_ID}={process_id} is not below "
                        f"{ENV_NUM_PROCESSES}={num_processes}")
    kwargs["process_id"] = process_id
  if len(kwargs) == 3:
    # All given: skip cluster auto-detection, which under SLURM would otherwise limit each
    # process to the single GPU numbered SLURM_LOCALID.
    kwargs["cluster_detection_method"] = "deactivate"
  return kwargs


def initialize_from_env(environ: Mapping[str, str] | None = None,
                        initialize: Callable[..., None] | None = None) -> bool:
  """Calls jax.distributed.initialize() when the environment asks for it; True if it did."""
  if _process["joined"]:  # JAX allows one initialize per process.
    return True
  kwargs = initialize_kwargs(os.environ if environ is None else environ)
  if kwargs is None:
    return False
  if initialize is None:
    import jax  # pylint: disable=g-import-not-at-top
    # CPU devices of different processes (tests, laptops) talk through gloo; the setting
    # leaves TPU and GPU devices alone.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    _process.update(index=jax.process_index(), joined=True)
    return True
  initialize(**kwargs)
  return True


def process_index() -> int:
  """This process's index: 0 for a single process or before joining the job."""
  return _process["index"]


def configure_logging() -> None:
  """absl's handler formats all logging (absl.logging and Python loggers). rew_jax's own
  loggers (`logging.getLogger(__name__)`) log INFO on process 0 and WARNING on the others,
  so that N hosts do not print N copies; the libraries' INFO chatter (orbax logs every
  checkpoint step of every thread) stays off: WARNING for absl's verbosity."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.use_absl_handler()
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("rew_jax").setLevel(logging.INFO if process_index() == 0 else logging.WARNING)


def process_count() -> int:
  """Processes in the job: 1 unless initialize_from_env joined a multi-process job."""
  if not _process["joined"]:
    return 1
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_count()


def barrier(name: str) -> None:
  """Waits until every process of the job gets here (nothing on a single process): e.g.
  after process 0 writes a file that the others then read."""
  if process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)
