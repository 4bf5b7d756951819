"""Parity with the PyTorch reference (transformers GitForCausalLM / CLIPVisionModel) on small
random configs built here (no hub): logits within 1e-4 in float32, identical greedy output."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rew_jax.models import convert, decoding, git, git_config, vit  # noqa: E402

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
              image_size=32, patch_size=8)


def _randomise(module, seed):
  """Replaces every weight (LayerNorms included) by noise so that parity is not trivial."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      scale = 0.3 if "output.weight" == name else 0.1
      p.copy_(torch.randn(p.shape, generator=gen) * scale + (1.0 if "LayerNorm.weight" in name
                                                               or "norm" in name else 0.0))


@pytest.fixture(scope="module")
def hf_git(tmp_path_factory):
  config = transformers.GitConfig(
      vision_config=VISION, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=64, vocab_size=128, max_position_embeddings=32,
      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  torch.manual_seed(0)
  model = transformers.GitForCausalLM(config).eval()
  _randomise(model, 0)
  path = str(tmp_path_factory.mktemp("hf_git"))
  model.save_pretrained(path)
  model_config, params = convert.load_hf_git(path, max_prompt_len=3, max_target_len=8)
  params = jax.tree.map(jnp.asarray, params)
  ours = git.GiT(model_config)
  return model, ours, params


def _inputs(seed=0, batch=2, length=6):
  rng = np.random.default_rng(seed)
  pixels = rng.normal(size=(batch, 3, 32, 32)).astype(np.float32)
  ids = rng.integers(3, 128, size=(batch, length))
  ids[:, 0] = 101
  return pixels, ids


def test_logits_match(hf_git):
  hf, ours, params = hf_git
  pixels, ids = _inputs()
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels)).logits.numpy()
  num_image = (32 // 8)**2 + 1
  ref = ref[:, num_image:]
  images = jnp.asarray(pixels.transpose(0, 2, 3, 1))
  empty_prompt = jnp.zeros((2, 3), jnp.int32)  # GIT has no bidirectional prompt: leave it empty.
  out = jax.jit(ours.apply)(params, images, empty_prompt, jnp.asarray(ids, jnp.int32))
  assert np.abs(np.asarray(out) - ref).max() <= 1e-4


def test_greedy_generation_matches(hf_git):
  hf, ours, params = hf_git
  pixels, _ = _inputs(seed=1, batch=3)
  with torch.no_grad():
    ref = hf.generate(pixel_values=torch.tensor(pixels), input_ids=torch.full((3, 1), 101),
                      max_new_tokens=8, do_sample=False, num_beams=1, eos_token_id=102,
                      pad_token_id=0).numpy()[:, 1:]
  images = jnp.asarray(pixels.transpose(0, 2, 3, 1))
  fn = jax.jit(functools.partial(decoding.greedy_decode, ours, max_len=8))
  seqs, _ = fn(params, images, jnp.zeros((3, 3), jnp.int32))
  seqs = np.asarray(seqs)[:, :ref.shape[1]]
  np.testing.assert_array_equal(seqs, ref)


def test_clip_vision_matches():
  config = transformers.CLIPVisionConfig(**VISION)
  torch.manual_seed(1)
  model = transformers.CLIPVisionModel(config).eval()
  _randomise(model, 1)
  pixels, _ = _inputs(seed=2)
  with torch.no_grad():
    last = model(pixel_values=torch.tensor(pixels)).last_hidden_state
    ref = model.post_layernorm(last).numpy()
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  model_config = dict(variant="B/8", image_size=32,
                      vit=dict(width=32, depth=2, num_heads=2, mlp_dim=64))
  params = convert.clip_vision_to_params(sd, model_config)
  prefixed = convert.clip_vision_to_params({"vision_model." + k: v for k, v in sd.items()},
                                           model_config)
  jax.tree.map(np.testing.assert_array_equal, params, prefixed)
  scanned = convert.clip_vision_to_params(sd, dict(model_config, scan_layers=True))
  assert scanned["blocks"]["mlp"]["fc1"]["kernel"].shape == (2, 32, 64)
  spec = git_config.parse_config(model_config).vit
  out = jax.jit(vit.VisionTransformer(spec).apply)({"params": params},
                                                  jnp.asarray(pixels.transpose(0, 2, 3, 1)))
  assert np.abs(np.asarray(out) - ref).max() <= 1e-4


def test_missing_tensor_is_reported(hf_git):
  hf, ours, _ = hf_git
  sd = {k: v.numpy() for k, v in hf.state_dict().items()}
  del sd["output.bias"]
  with pytest.raises(convert.CheckpointError, match="output.bias"):
    convert.git_to_params(sd, ours.config, source="ckpt")
