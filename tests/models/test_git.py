"""GiT blocks, the GIT attention mask, scan/remat equivalence and the KV cache."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rew_jax import registry
from rew_jax.errors import ConfigError
from rew_jax.models import convert, decoding, git, git_config, layers, text_decoder, vit
from gitcase import random_params, tiny_config


@pytest.fixture(scope="module")
def forward(tiny):
  model, params, _ = tiny
  return jax.jit(lambda p, *a: model.apply(p, *a))


def test_registered():
  assert registry.MODELS.get("git") is git.GiTModel


def test_registered_model_teacher_forces_behind_bos(tiny):
  module, params, (images, prompts, targets) = tiny
  model = registry.MODELS.get("git")(tiny_config())
  batch = {"image": images, "prompt": prompts, "target": targets}
  logits, got_targets, weights = model.logits_and_targets(params["params"], batch, rng=None,
                                                          train=False)
  shifted = jnp.concatenate([jnp.full((3, 1), 101, jnp.int32), targets[:, :-1]], axis=1)
  np.testing.assert_allclose(logits, module.apply(params, images, prompts, shifted),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(got_targets, targets)
  np.testing.assert_array_equal(weights, np.asarray(targets) != 0)  # PAD does not count.
  assert [x.shape for x in model.dummy_inputs(2)] == [(2, 32, 32, 3), (2, 5), (2, 6)]
  assert set(model.loaders) == {"hf_git", "hf_clip"}
  assert {"generate", "class_rows", "class_likelihood", "embed"} <= set(model.predict_fns())


def test_unknown_config_key_is_an_error():
  with pytest.raises(ConfigError, match="unknown config key model.colour"):
    git_config.parse_config(dict(tiny_config(), colour="red"))
  with pytest.raises(ConfigError, match="model.decoder.num_layer; closest valid keys: num_layers"):
    git_config.parse_config(dict(tiny_config(), decoder=dict(num_layer=2)))
  with pytest.raises(ConfigError, match="variant"):
    git_config.parse_config(dict(tiny_config(), variant="Q/3"))


def test_shapes(tiny, forward):
  model, params, (images, prompts, targets) = tiny
  logits = forward(params, images, prompts, targets)
  assert logits.shape == (3, 6, 128) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()
  p = params["params"]
  assert p["encoder"]["patch_embed"]["kernel"].shape == (8, 8, 3, 32)
  assert p["encoder"]["pos_embedding"].shape == (17, 32)
  assert p["decoder"]["layers_0"]["attn"]["query"]["kernel"].shape == (32, 4, 8)
  assert p["head"]["kernel"].shape == (32, 128)


def test_git_mask_values():
  prompt = jnp.array([[7, 8, 0]])
  target = jnp.array([[101, 9, 0]])
  m = np.asarray(text_decoder.git_mask(2, prompt, target))[0, 0].astype(int)
  # Columns: img0 img1 p7 p8 pad | t101 t9 pad
  expected = np.array([
      [1, 1, 1, 1, 0, 0, 0, 0],  # image tokens: whole valid prefix, no targets
      [1, 1, 1, 1, 0, 0, 0, 0],
      [1, 1, 1, 1, 0, 0, 0, 0],  # prompt tokens: bidirectional over the prefix
      [1, 1, 1, 1, 0, 0, 0, 0],
      [1, 1, 1, 1, 0, 0, 0, 0],  # a pad query still sees the prefix (no empty rows)
      [1, 1, 1, 1, 0, 1, 0, 0],  # targets: prefix + causal
      [1, 1, 1, 1, 0, 1, 1, 0],
      [1, 1, 1, 1, 0, 1, 1, 0],  # pad target key never attended
  ])
  np.testing.assert_array_equal(m, expected)
  pos = np.asarray(text_decoder.text_positions(prompt, target))
  np.testing.assert_array_equal(pos, [[0, 1, 1, 2, 3, 3]])


def test_padding_and_causality(tiny, forward):
  model, params, (images, prompts, targets) = tiny
  base = np.asarray(forward(params, images, prompts, targets))
  # Less prompt padding changes nothing (examples 0 and 1 have prompts of <= 3 tokens).
  narrow = prompts[:, :3]
  out = np.asarray(forward(params, images[:2], narrow[:2], targets[:2]))
  np.testing.assert_allclose(out, base[:2], atol=1e-5)
  # A later target token does not change earlier logits; it changes its own position on.
  changed = targets.at[0, 3].set(77)
  out = np.asarray(forward(params, images, prompts, changed))
  np.testing.assert_allclose(out[0, :3], base[0, :3], atol=1e-5)
  assert np.abs(out[0, 3:5] - base[0, 3:5]).max() > 1e-4
  # The prompt reaches every target position (bidirectional prefix).
  prompt2 = prompts.at[0, 0].set(55)
  out = np.asarray(forward(params, images, prompt2, targets))
  assert np.abs(out[0, 0] - base[0, 0]).max() > 1e-4


def test_fused_attention_equals_plain_formula():
  kq, kk, kv = jax.random.split(jax.random.key(3), 3)
  q = jax.random.normal(kq, (2, 7, 4, 8))
  k = jax.random.normal(kk, (2, 7, 4, 8))
  v = jax.random.normal(kv, (2, 7, 4, 8))
  mask = text_decoder.git_mask(3, jnp.array([[5, 0], [5, 6]]), jnp.array([[1, 2], [1, 0]]))
  np.testing.assert_allclose(jax.jit(layers.fused_attention)(q, k, v, mask),
                             jax.jit(layers.softmax_attention)(q, k, v, mask), atol=1e-5)


def test_mlp_and_layer_norm_values():
  x = jax.random.normal(jax.random.key(0), (2, 3, 8))
  mlp = layers.Mlp(16, "gelu")
  p = nn.unbox(jax.jit(mlp.init)(jax.random.key(1), x))["params"]
  h = np.asarray(x) @ p["fc1"]["kernel"] + p["fc1"]["bias"]
  from scipy.special import erf
  h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
  np.testing.assert_allclose(jax.jit(mlp.apply)({"params": p}, x),
                             h @ p["fc2"]["kernel"] + p["fc2"]["bias"], atol=1e-5)
  ln = layers.layer_norm(1e-12, jnp.float32)
  y = np.asarray(jax.jit(ln.apply)(nn.unbox(ln.init(jax.random.key(0), x)), x))
  xn = np.asarray(x)
  ref = (xn - xn.mean(-1, keepdims=True)) / np.sqrt(xn.var(-1, keepdims=True) + 1e-12)
  np.testing.assert_allclose(y, ref, atol=1e-5)


def test_vit_posemb_resize_and_other_resolution():
  spec = vit.parse_variant("mu/8", 32, width=16, depth=1, num_heads=2, mlp_dim=32)
  model = vit.VisionTransformer(spec)
  params = random_params(model, jnp.zeros((1, 32, 32, 3)))
  out = jax.jit(model.apply)(params, jnp.ones((2, 48, 48, 3)))  # 6×6 grid from a 4×4 table
  assert out.shape == (2, 37, 16)
  pos = params["params"]["pos_embedding"]
  same = vit.resize_posemb(pos, 4)
  np.testing.assert_array_equal(same, pos)
  # A constant table stays constant under bicubic resizing.
  flat = jnp.ones_like(pos)
  np.testing.assert_allclose(vit.resize_posemb(flat, 7), jnp.ones((50, 16)), atol=1e-5)


def test_scan_and_remat_equal_unrolled(tiny):
  model, params, inputs = tiny
  scanned = git.GiT(tiny_config(scan_layers=True, remat=True))
  sp = {"params": convert.scan_params(jax.tree.map(np.asarray, params["params"]))}
  abstract = nn.unbox(jax.eval_shape(scanned.init, jax.random.key(0), *inputs))
  assert jax.tree.map(lambda x: x.shape, abstract) == jax.tree.map(lambda x: x.shape, sp)

  def outputs_and_grads(m):
    # Logits and the gradient of sum(logits²), from one forward and one backward pass.
    def fn(p):
      out, vjp = jax.vjp(lambda q: m.apply(q, *inputs), p)
      return out, vjp(2.0 * out)[0]
    return jax.jit(fn)

  out_scan, g_scan = outputs_and_grads(scanned)(sp)
  out_ref, g_ref = outputs_and_grads(model)(params)
  np.testing.assert_allclose(out_scan, out_ref, atol=1e-5)
  back = convert.unscan_params(jax.tree.map(np.asarray, g_scan["params"]))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), back,
               jax.tree.map(np.asarray, g_ref["params"]))


@pytest.mark.parametrize("scan", [False, True])
def test_cache_equals_no_cache(tiny, forward, scan):
  """Feeding the targets one by one through the KV cache gives the full-forward logits."""
  _, params, (images, prompts, targets) = tiny
  model = git.GiT(tiny_config(scan_layers=scan))
  if scan:
    params = {"params": convert.scan_params(jax.tree.map(np.asarray, params["params"]))}
  full = np.asarray(jax.jit(model.apply)(params, images, prompts, targets))
  cache = jax.jit(lambda p, i, t: model.apply(p, i, t, method=git.GiT.prefill))(
      params, images, prompts)
  cache = decoding.init_target_cache(cache, 1, targets.shape[1])
  step = jax.jit(lambda p, tok, c, i: model.apply(p, tok, c, i, method=git.GiT.decode_step))
  valid = np.asarray(targets) != 0
  for i in range(targets.shape[1]):
    logits, cache = step(params, targets[:, i:i + 1], cache, i)
    rows = valid[:, i]
    np.testing.assert_allclose(np.asarray(logits)[rows, 0], full[rows, i], atol=2e-5)


def test_dropout_is_active_only_in_training(tiny):
  _, _, inputs = tiny
  config = tiny_config(decoder=dict(num_layers=1))
  model = git.GiT(tiny_config(decoder=dict(num_layers=1, dropout=0.5, attention_dropout=0.2),
                              vit=dict(drop_path=0.3)))
  params = random_params(model, *inputs)
  train = jax.jit(lambda p, r: model.apply(p, *inputs, train=True, rngs={"dropout": r}))
  a, b = train(params, jax.random.key(1)), train(params, jax.random.key(2))
  c = jax.jit(lambda p: model.apply(p, *inputs, train=False))(params)
  d = jax.jit(git.GiT(config).apply)(params, *inputs)
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3
  np.testing.assert_allclose(c, d, atol=1e-6)


def test_bfloat16_compute_is_close(tiny, forward):
  _, params, inputs = tiny
  model = git.GiT(tiny_config(dtype="bfloat16"))
  out = jax.jit(model.apply)(params, *inputs)
  assert out.dtype == jnp.float32
  ref = forward(params, *inputs)
  assert np.abs(np.asarray(out) - np.asarray(ref)).max() < 0.05
