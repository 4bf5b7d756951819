"""Parameter counts and FLOPs against XLA's own count; the MFU peak and the attention
implementation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import pytest

from rew_jax import metrics as metrics_lib
from rew_jax.models import flops, git, git_config, layers


def test_git_large_parameter_count():
  counts = flops.param_count(git.default_config())
  assert counts["total"] == 393_458_746  # ≈ 0.39B, as in GER-ALD's GiT-Large
  assert counts["encoder"] == 303_179_776  # CLIP ViT-L/14 vision tower


def test_forward_flops_match_xla_cost_analysis():
  config = dict(variant="S/16", image_size=64, vit=dict(depth=2),
                decoder=dict(num_layers=2, hidden_size=128, num_heads=4, mlp_dim=512),
                vocab_size=1000, max_prompt_len=8, max_target_len=8)
  model = git.GiT(config)
  inputs = git.dummy_inputs(git_config.parse_config(config), 2)
  params = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), *inputs))
  xla = jax.jit(model.apply).lower(params, *inputs).compile().cost_analysis()["flops"] / 2
  ours = flops.forward_flops(config).total
  assert ours == pytest.approx(xla, rel=0.05)  # XLA also counts norms and softmax
  assert flops.train_flops_per_example(config) == 3 * ours


def test_decode_flops_grow_with_beams_and_length():
  config = git.default_config()
  one = flops.decode_flops_per_example(config, max_len=4, num_beams=1)
  four = flops.decode_flops_per_example(config, max_len=4, num_beams=4)
  longer = flops.decode_flops_per_example(config, max_len=8, num_beams=4)
  assert one < four < longer
  # The image encoder dominates short decodes: beams are cheap with a shared prefix.
  assert four < 1.5 * one


def test_attention_implementation_is_chosen_by_platform_dtype_and_head_size():
  choose = layers.attention_implementation
  assert choose("gpu", jnp.bfloat16, 64) == "cudnn"
  assert choose("gpu", jnp.float16, 128) == "cudnn"
  assert choose("gpu", jnp.float32, 64) == "xla"      # cuDNN's fused kernel: half only.
  assert choose("gpu", jnp.bfloat16, 160) == "xla"    # Head size over 128.
  assert choose("gpu", jnp.bfloat16, 36) == "xla"     # Not a multiple of 8.
  assert choose("tpu", jnp.bfloat16, 64) == "xla" and choose("cpu", jnp.bfloat16, 64) == "xla"
  assert choose("cpu", jnp.float32, 64, "cudnn") == "cudnn"
  with pytest.raises(ValueError, match="'flash'"):
    choose("gpu", jnp.bfloat16, 64, "flash")


def test_cpu_peak_is_measured_and_split_among_fake_devices():
  peak = metrics_lib.measure_cpu_peak()
  assert 1e9 < peak < 1e14 and metrics_lib.measure_cpu_peak() == peak  # Once per process.
  assert metrics_lib.peak_flops_per_device() == pytest.approx(peak / jax.local_device_count())
  config = ml_collections.ConfigDict({"peak_flops_per_device": 5e12})
  assert metrics_lib.peak_flops_per_device(config) == 5e12
