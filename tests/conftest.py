"""Test set-up shared by the whole suite.

8 fake CPU devices so that sharding is exercised as on a pod slice; this must happen before
jax is imported anywhere, hence at the top of conftest.
"""

import os
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA:CPU's flags as `python -m rew_jax` sets them (rew_jax/xla_cpu.py): the tests compare
# runs in this process with runs of the CLI, bit for bit, so both must compile alike.
from rew_jax import xla_cpu  # noqa: E402  # pylint: disable=g-import-not-at-top
xla_cpu.set_default_flags()
os.environ["HF_HUB_OFFLINE"] = "1"  # Never reach for a hub: models come from local paths.
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One persistent compilation cache for the test processes and the subprocesses they start:
# the suite compiles the same tiny models many times over (each demo run trains four of
# them), and XLA's CPU compile is most of a tiny run's time. Entries are keyed by the
# program, the jax version and the flags, so a stale entry is never used.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "rew_jax_tests_jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

# grain 0.2.18 reads an absl flag when it starts workers; outside absl.app (pytest) the flags
# are unparsed and that raises UnparsedFlagAccessError (upstream grain issue 1355).
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

import pytest  # noqa: E402


@pytest.fixture
def workdir(tmp_path):
  """A fresh, empty working directory for one test."""
  path = tmp_path / "workdir"
  path.mkdir()
  return path


@pytest.fixture(scope="module")
def module_workdir(tmp_path_factory):
  """A working directory shared by the tests of one module (for compile-once fixtures)."""
  return tmp_path_factory.mktemp("module_workdir")


@pytest.fixture(scope="session")
def gcs():
  """A local GCS emulator for the session (tests/gcs_emulator.py), its variables set in
  os.environ (and so inherited by subprocesses) while it runs."""
  import gcs_emulator  # pylint: disable=g-import-not-at-top
  saved = {k: os.environ.get(k) for k in gcs_emulator.Emulator().env}
  with gcs_emulator.Emulator() as emulator:
    emulator.apply()
    yield emulator
  for key, value in saved.items():
    if value is None:
      os.environ.pop(key, None)
    else:
      os.environ[key] = value
