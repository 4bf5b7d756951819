"""Starting a run from converted HF weights (GIT, CLIP vision: the GiT model's loaders) or
from another run's checkpoint (parameters only, onto the new run's shardings)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rew_jax import checkpoint as ckpt_lib  # noqa: E402
from rew_jax import config as config_lib  # noqa: E402
from rew_jax import model_setup  # noqa: E402
from rew_jax import train as train_lib  # noqa: E402
from rew_jax.errors import UserError  # noqa: E402
from rew_jax.models import convert  # noqa: E402

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


@pytest.fixture(scope="module")
def model_config(hf_dirs):
  return config_lib.ConfigDict(dict(convert.model_config_from_hf(
      convert.read_hf_config(hf_dirs[0]), max_prompt_len=4, max_target_len=6), name="git"))


def _setup(model_config, seed=0):
  """The GiT of `model_config` initialised with FSDP over the 8 devices."""
  return model_setup.setup_model(config_lib.ConfigDict(dict(
      model=model_config, mesh=dict(data=1, fsdp=-1, tensor=1), seed=seed)))


def test_init_from_hf_git_and_clip(hf_dirs, model_config):
  git_dir, clip_dir = hf_dirs
  s = _setup(model_config)

  loaded = ckpt_lib.init_from(f"hf_git:{git_dir}", s.model, s.params, s.param_shardings)
  expected = convert.git_to_params(convert.read_state_dict(git_dir), model_config)["params"]
  for a, b, sh in zip(jax.tree.leaves(loaded), jax.tree.leaves(expected),
                      jax.tree.leaves(s.param_shardings)):
    np.testing.assert_array_equal(np.asarray(a), b)
    assert a.sharding == sh  # Placed on the run's shardings (FSDP over 8 devices).

  mixed = ckpt_lib.init_from(f"hf_clip:{clip_dir}", s.model, s.params, s.param_shardings)
  clip = convert.clip_vision_to_params(convert.read_state_dict(clip_dir), model_config)
  for a, b in zip(jax.tree.leaves(mixed["encoder"]), jax.tree.leaves(clip)):
    np.testing.assert_array_equal(np.asarray(a), b)
  for a, b in zip(jax.tree.leaves(mixed["head"]), jax.tree.leaves(s.params["head"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # Untouched: random init.

  other = _setup(config_lib.ConfigDict(dict(model_config, vocab_size=256)))
  with pytest.raises(config_lib.ConfigError, match="shapes do not match"):
    ckpt_lib.init_from(f"hf_git:{git_dir}", other.model, other.params, other.param_shardings)
  with pytest.raises(config_lib.ConfigError, match="no loader 'hf_bert'.*hf_clip, hf_git"):
    ckpt_lib.init_from(f"hf_bert:{git_dir}", s.model, s.params, s.param_shardings)
  for scratch in ("", "none", "None"):
    assert ckpt_lib.init_from(scratch, s.model, s.params, s.param_shardings) is s.params


def test_init_from_another_run_reads_parameters_only(model_config, tmp_path):
  pretrained = _setup(model_config, seed=1)
  state = train_lib.TrainState(jnp.int32(7), pretrained.params,
                               {"mu": jax.tree.map(jnp.ones_like, pretrained.params)},
                               jax.random.key(3))
  manager = ckpt_lib.Manager(str(tmp_path / "pretrain"), async_save=False)
  manager.save(7, state, force=True)
  manager.close()

  s = _setup(model_config)
  loaded = ckpt_lib.init_from(str(tmp_path / "pretrain"), s.model, s.params, s.param_shardings)
  for a, b, sh in zip(jax.tree.leaves(loaded), jax.tree.leaves(pretrained.params),
                      jax.tree.leaves(s.param_shardings)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert a.sharding == sh
  step_dir = str(tmp_path / "pretrain" / "checkpoints" / "7")
  # Shapes and shardings are all it needs: the train loop skips the random init then.
  assert ckpt_lib.from_checkpoint(step_dir) and not ckpt_lib.from_checkpoint("hf_git:/x")
  again = ckpt_lib.init_from(step_dir, s.model, s.abstract_params, s.param_shardings)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), again, loaded))

  other = _setup(config_lib.ConfigDict(dict(model_config, vocab_size=256)))
  with pytest.raises(UserError, match="do not match the model's.*head"):
    ckpt_lib.init_from(step_dir, other.model, other.params, other.param_shardings)
