"""Parity of the frozen feature models with transformers on small random configs (no hub):
CLIP's vision tower and projected image embedding (CLIPModel), DINOv2's tokens and pooled
feature (Dinov2Model), within 1e-4 in float32, through the registered models' loaders; and
the main recipe's CLIP initialisation (configs/git_large_rew.py)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rew_jax import checkpoint as ckpt_lib  # noqa: E402
from rew_jax import config as config_lib  # noqa: E402
from rew_jax import model_setup, registry  # noqa: E402
from rew_jax import train as train_lib  # noqa: E402
from rew_jax.models import convert, dinov2  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
              image_size=32, patch_size=8)
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            vocab_size=64, max_position_embeddings=16)
DINO = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
            image_size=32, patch_size=8, layerscale_value=0.5)


def _randomise(module, seed, scale=0.1):
  """Every weight (norms and layer scales included) replaced by noise: parity is not trivial."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      base = 1.0 if ("norm" in name and name.endswith("weight")) or "lambda1" in name else 0.0
      p.copy_(torch.randn(p.shape, generator=gen) * scale + base)


def _pixels(seed, batch=3, size=32):
  return np.random.default_rng(seed).normal(size=(batch, 3, size, size)).astype(np.float32)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
  config = transformers.CLIPConfig(vision_config=VISION, text_config=TEXT, projection_dim=16)
  torch.manual_seed(0)
  model = transformers.CLIPModel(config).eval()
  _randomise(model, 0)
  path = str(tmp_path_factory.mktemp("hf_clip"))
  model.save_pretrained(path)
  return model, path


def _clip_model_config(path):
  fields = convert.clip_vision_spec_from_hf(convert.read_hf_config(path))
  assert fields["projection_dim"] == 16 and fields["patch_size"] == 8
  return dict(name="clip_image", variant="B/8", image_size=32, projection_dim=16,
              vit=dict(width=32, depth=2, num_heads=2, mlp_dim=64))


def test_clip_tower_and_projected_embedding_match(clip_dir):
  hf, path = clip_dir
  model = registry.MODELS.get("clip_image")(_clip_model_config(path))
  params = jax.tree.map(jnp.asarray, model.loaders["hf_clip"](path, None))
  pixels = _pixels(1)
  with torch.no_grad():
    out = hf.vision_model(pixel_values=torch.tensor(pixels))
    ref_tokens = hf.vision_model.post_layernorm(out.last_hidden_state).numpy()
    ref_pooled = out.pooler_output.numpy()
    ref_embeds = hf.get_image_features(pixel_values=torch.tensor(pixels))
    ref_embeds = getattr(ref_embeds, "pooler_output", ref_embeds).numpy()
  images = jnp.asarray(pixels.transpose(0, 2, 3, 1))
  tokens = model.module.apply({"params": params}, images, method="tokens")
  assert np.abs(np.asarray(tokens) - ref_tokens).max() <= 1e-4
  assert np.abs(np.asarray(tokens)[:, 0] - ref_pooled).max() <= 1e-4
  embedding = model.predict_fns()["embed"](params, {"image": images})["embedding"]
  assert embedding.shape == (3, 16)
  assert np.abs(np.asarray(embedding) - ref_embeds).max() <= 1e-4
  # The embedding is not the class token: the projection is really applied.
  assert np.abs(ref_embeds[:, :16] - ref_pooled[:, :16]).max() > 1e-2


def test_clip_errors_name_the_folder(clip_dir, tmp_path):
  _, path = clip_dir
  model = registry.MODELS.get("clip_image")(_clip_model_config(path))
  with pytest.raises(convert.CheckpointError, match=r"nowhere: no such folder; expected a local "
                     "HF CLIP folder"):
    model.loaders["hf_clip"](str(tmp_path / "nowhere").replace(str(tmp_path) + "/", ""), None)
  sd = convert.read_state_dict(path)
  del sd["visual_projection.weight"]
  with pytest.raises(convert.CheckpointError, match="no visual_projection.weight"):
    convert.clip_image_to_params(sd, model.spec, source="ckpt")


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
  torch.manual_seed(2)
  model = transformers.Dinov2Model(transformers.Dinov2Config(**DINO)).eval()
  _randomise(model, 2)
  path = str(tmp_path_factory.mktemp("hf_dinov2"))
  model.save_pretrained(path)
  return model, path


def test_dinov2_tokens_and_pooled_feature_match(dino_dir):
  hf, path = dino_dir
  fields = dinov2.spec_from_hf(convert.read_hf_config(path))
  assert (fields["mlp_dim"], fields["ln_eps"], fields["image_size"]) == (64, 1e-6, 32)
  model = registry.MODELS.get("dinov2")(dict(name="dinov2", **fields))
  params = jax.tree.map(jnp.asarray, model.loaders["hf_dinov2"](path, None))
  pixels = _pixels(3)
  with torch.no_grad():
    out = hf(pixel_values=torch.tensor(pixels))
  tokens = model.module.apply({"params": params}, jnp.asarray(pixels.transpose(0, 2, 3, 1)))
  assert np.abs(np.asarray(tokens) - out.last_hidden_state.numpy()).max() <= 1e-4
  embedding = model.predict_fns()["embed"](params,
                                           {"image": jnp.asarray(pixels.transpose(0, 2, 3, 1))})
  assert np.abs(np.asarray(embedding["embedding"]) - out.pooler_output.numpy()).max() <= 1e-4


def test_dinov2_reads_the_older_tensor_names(dino_dir):
  """Checkpoints saved before transformers 5 name attention attention.attention.query etc."""
  hf, path = dino_dir
  sd = convert.read_state_dict(path)
  renames = {"attention.q_proj": "attention.attention.query",
             "attention.k_proj": "attention.attention.key",
             "attention.v_proj": "attention.attention.value",
             "attention.o_proj": "attention.output.dense"}
  old = {}
  for k, v in sd.items():
    for new, before in renames.items():
      k = k.replace(new, before)
    old["dinov2." + k] = v
  assert "dinov2.encoder.layer.1.attention.attention.query.weight" in old
  a = convert.dinov2_to_params(sd, 2, 2)
  b = convert.dinov2_to_params(old, 2, 2)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  with pytest.raises(convert.CheckpointError, match="tensors not understood"):
    convert.dinov2_to_params(sd, 1, 2, source="two-layer ckpt")


# ---------------------------------------------------------------------------------------------
# CLIP initialisation of the main recipe (configs/git_large_rew.py).


def _recipe(arg):
  return config_lib.load_config(os.path.join(REPO, "configs", f"git_large_rew.py:{arg}")).train


def test_main_recipe_starts_from_clip(tmp_path):
  assert _recipe("").init_from == "hf_clip:weights/clip-vit-large-patch14"
  assert _recipe("clip=none").init_from == "none"
  assert _recipe("runlocal").init_from == "none"
  # The runlocal model's shapes (mu/8, width 32, 1 layer, 32 px) in a random CLIP folder.
  hf = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
      hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
      image_size=32, patch_size=8, projection_dim=16)).eval()
  _randomise(hf, 4)
  hf.save_pretrained(str(tmp_path / "clip"))
  config = train_lib.with_defaults(_recipe(f"runlocal,clip={tmp_path / 'clip'}"))
  setup = model_setup.setup_model(config)
  params = ckpt_lib.init_from(config.init_from, setup.model, setup.params,
                               setup.param_shardings)
  sd = {k: v.numpy() for k, v in hf.state_dict().items()}
  np.testing.assert_array_equal(np.asarray(params["encoder"]["blocks_0"]["mlp"]["fc1"]["kernel"]),
                                sd["vision_model.encoder.layers.0.mlp.fc1.weight"].T)
  np.testing.assert_array_equal(np.asarray(params["head"]["kernel"]),
                                np.asarray(setup.params["head"]["kernel"]))
  missing = _recipe(f"runlocal,clip={tmp_path / 'absent'}")
  with pytest.raises(convert.CheckpointError, match=r"absent: no such folder; expected a local "
                     r"HF CLIP folder"):
    ckpt_lib.init_from(missing.init_from, setup.model, setup.params, setup.param_shardings)
