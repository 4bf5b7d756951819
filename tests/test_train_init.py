"""Starting a run from converted HF weights (GIT, CLIP vision) or another run's checkpoint."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rew_jax import config as config_lib  # noqa: E402
from rew_jax import sharding  # noqa: E402
from rew_jax import train as train_lib  # noqa: E402
from rew_jax.models import convert, git  # noqa: E402

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
              image_size=32, patch_size=8)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  torch.manual_seed(0)
  hf_git = transformers.GitForCausalLM(transformers.GitConfig(
      vision_config=VISION, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
      intermediate_size=64, vocab_size=128, max_position_embeddings=32)).eval()
  git_dir = str(tmp_path_factory.mktemp("hf_git"))
  hf_git.save_pretrained(git_dir)
  clip = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**VISION)).eval()
  clip_dir = str(tmp_path_factory.mktemp("hf_clip"))
  clip.save_pretrained(clip_dir)
  return git_dir, clip_dir


def _sharded_init(model_config):
  mesh = sharding.make_mesh(dict(data=1, fsdp=-1, tensor=1))
  model = git.GiT(model_config)
  variables, shardings = sharding.init_sharded(
      model, jax.random.key(0), *git.dummy_inputs(git.parse_config(model_config)), mesh=mesh)
  return variables["params"], shardings["params"]


def test_init_from_hf_git_and_clip(hf_dirs):
  git_dir, clip_dir = hf_dirs
  model_config = config_lib.ConfigDict(convert.model_config_from_hf(
      convert.read_hf_config(git_dir), max_prompt_len=4, max_target_len=6))
  params, shardings = _sharded_init(model_config)

  loaded = train_lib.init_from(f"hf_git:{git_dir}", model_config, params, shardings)
  expected = convert.git_to_params(convert.read_state_dict(git_dir), model_config)["params"]
  for a, b, s in zip(jax.tree.leaves(loaded), jax.tree.leaves(expected),
                     jax.tree.leaves(shardings)):
    np.testing.assert_array_equal(np.asarray(a), b)
    assert a.sharding == s  # Placed on the run's shardings (FSDP over 8 devices).

  mixed = train_lib.init_from(f"hf_clip:{clip_dir}", model_config, params, shardings)
  clip = convert.clip_vision_to_params(convert.read_state_dict(clip_dir), model_config)
  for a, b in zip(jax.tree.leaves(mixed["encoder"]), jax.tree.leaves(clip)):
    np.testing.assert_array_equal(np.asarray(a), b)
  for a, b in zip(jax.tree.leaves(mixed["head"]), jax.tree.leaves(params["head"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # Untouched: random init.

  other = config_lib.ConfigDict(dict(model_config, vocab_size=256))
  other_params, other_shardings = _sharded_init(other)
  with pytest.raises(config_lib.ConfigError, match="shapes do not match"):
    train_lib.init_from(f"hf_git:{git_dir}", other, other_params, other_shardings)
