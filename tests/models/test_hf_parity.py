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
  return model, ours, params, path


def _inputs(seed=0, batch=2, length=6):
  rng = np.random.default_rng(seed)
  pixels = rng.normal(size=(batch, 3, 32, 32)).astype(np.float32)
  ids = rng.integers(3, 128, size=(batch, length))
  ids[:, 0] = 101
  return pixels, ids


def test_logits_match(hf_git):
  hf, ours, params, _ = hf_git
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
  hf, ours, params, _ = hf_git
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
  hf, ours, _, _ = hf_git
  sd = {k: v.numpy() for k, v in hf.state_dict().items()}
  del sd["output.bias"]
  with pytest.raises(convert.CheckpointError, match="output.bias"):
    convert.git_to_params(sd, ours.config, source="ckpt")


def test_trimmed_vocabulary_keeps_the_checkpoints_rows(hf_git, tmp_path):
  """A GiT on a trimmed vocabulary, loaded from the same HF checkpoint, gives the full model's
  logits at every kept id and never predicts a dropped one; dropped input ids read as UNK."""
  from rew_jax.data import vocab  # pylint: disable=g-import-not-at-top
  _, ours, params, path = hf_git
  kept = np.array(sorted({0, 100, 101, 102} | set(range(3, 60))), np.int32)
  ids_path = vocab.save_ids(kept, str(tmp_path / vocab.FILE_NAME))
  trimmed = git.GiTModel(dict(ours.config, vocab_ids=ids_path))
  trimmed_params = {"params": jax.tree.map(jnp.asarray, trimmed.loaders["hf_git"](path, None))}
  assert trimmed_params["params"]["head"]["kernel"].shape == (32, len(kept))
  pixels, ids = _inputs(seed=2)
  ids = np.where(np.isin(ids, kept), ids, 100)  # Inputs the trimmed model reads as-is.
  images = jnp.asarray(pixels.transpose(0, 2, 3, 1))
  prompt = jnp.zeros((2, 3), jnp.int32)
  full = np.asarray(jax.jit(ours.apply)(params, images, prompt, jnp.asarray(ids, jnp.int32)))
  out = np.asarray(jax.jit(trimmed.module.apply)(trimmed_params, images, prompt,
                                                   jnp.asarray(ids, jnp.int32)))
  assert out.shape == full.shape
  np.testing.assert_allclose(out[..., kept], full[..., kept], atol=1e-5)
  dropped = np.setdiff1d(np.arange(128), kept)
  assert (out[..., dropped] == decoding.NEG).all()
  # Training sees logits and targets over the kept rows.
  batch = dict(image=images, prompt=prompt, target=jnp.asarray(ids[:, 1:], jnp.int32))
  logits, targets, weights = trimmed.logits_and_targets(trimmed_params["params"], batch,
                                                        rng=None, train=False)
  assert logits.shape[-1] == len(kept)
  np.testing.assert_array_equal(kept[np.asarray(targets)], ids[:, 1:])
  np.testing.assert_array_equal(np.asarray(weights), (ids[:, 1:] != 0).astype(np.float32))
  # An id outside the kept set reads as [UNK].
  unk, as_unk = ids.copy(), ids.copy()
  unk[:, 2], as_unk[:, 2] = 61, 100
  a, b = (np.asarray(jax.jit(trimmed.module.apply)(trimmed_params, images, prompt,
                                                   jnp.asarray(x, jnp.int32)))
          for x in (unk, as_unk))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, out)  # The replaced token does change the output.
