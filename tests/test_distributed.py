"""Multi-host start-up from the launch scripts' environment."""

import pytest

from rew_jax import distributed
from rew_jax.errors import ConfigError, UserError


@pytest.mark.parametrize("environ", [{}, {"REW_JAX_DISTRIBUTED": "0"},
                                     {"REW_JAX_DISTRIBUTED": ""}])
def test_single_process_does_not_initialize(environ):
  calls = []
  assert distributed.initialize_kwargs(environ) is None
  assert distributed.initialize_from_env(environ, initialize=lambda **kw: calls.append(kw)) is False
  assert calls == []


def test_tpu_leaves_everything_to_jax_auto_detection():
  calls = []
  assert distributed.initialize_from_env({"REW_JAX_DISTRIBUTED": "1"},
                                         initialize=lambda **kw: calls.append(kw))
  assert calls == [{}]


def test_gpu_hosts_pass_the_layout_and_skip_auto_detection():
  environ = {"REW_JAX_DISTRIBUTED": "1", "REW_JAX_COORDINATOR_ADDRESS": "node001:61444",
             "REW_JAX_NUM_PROCESSES": "4", "REW_JAX_PROCESS_ID": "3"}
  assert distributed.initialize_kwargs(environ) == {
      "coordinator_address": "node001:61444", "num_processes": 4, "process_id": 3,
      "cluster_detection_method": "deactivate"}


def test_partial_layout_keeps_auto_detection_for_the_rest():
  environ = {"REW_JAX_DISTRIBUTED": "1", "REW_JAX_COORDINATOR_ADDRESS": "[fd00::1]:1234"}
  assert distributed.initialize_kwargs(environ) == {"coordinator_address": "[fd00::1]:1234"}


@pytest.mark.parametrize("environ, message", [
    ({"REW_JAX_DISTRIBUTED": "yes"}, "REW_JAX_DISTRIBUTED='yes': expected 0 or 1"),
    ({"REW_JAX_DISTRIBUTED": "1", "REW_JAX_COORDINATOR_ADDRESS": "node001"}, "expected HOST:PORT"),
    ({"REW_JAX_DISTRIBUTED": "1", "REW_JAX_NUM_PROCESSES": "0"},
     "REW_JAX_NUM_PROCESSES='0': expected an integer >= 1"),
    ({"REW_JAX_DISTRIBUTED": "1", "REW_JAX_PROCESS_ID": "x"},
     "REW_JAX_PROCESS_ID='x': expected an integer >= 0"),
    ({"REW_JAX_DISTRIBUTED": "1", "REW_JAX_NUM_PROCESSES": "2", "REW_JAX_PROCESS_ID": "2"},
     "REW_JAX_PROCESS_ID=2 is not below REW_JAX_NUM_PROCESSES=2"),
])
def test_bad_values_are_user_errors(environ, message):
  with pytest.raises(ConfigError, match=message.replace("[", r"\[")) as error:
    distributed.initialize_kwargs(environ)
  assert isinstance(error.value, UserError)
