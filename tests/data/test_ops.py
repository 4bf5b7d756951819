"""Preprocessing ops: spec parsing and the values each op produces."""

import io
import pickle

import numpy as np
import pytest
from PIL import Image

from rew_jax.data import ops
from rew_jax.data.tokenizers import BERT_EOS_ID as EOS
from rew_jax.errors import ConfigError, UnknownNameError
from rew_jax.registry import PP_OPS


def encode(array, fmt="PNG") -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format=fmt)
  return buf.getvalue()


def gradient(h=6, w=8):
  img = np.zeros((h, w, 3), np.uint8)
  img[..., 0] = np.arange(w)[None, :] * 10
  img[..., 1] = np.arange(h)[:, None] * 20
  img[..., 2] = 7
  return img


def run(spec, example, seed=0):
  return ops.get_preprocess(spec)(example, np.random.default_rng(seed))


def test_parse_spec():
  assert ops.parse_spec("decode|resize(224)|normalize('clip')|pad(4, key='prompt', pad_id=1)") == [
      ("decode", (), {}), ("resize", (224,), {}), ("normalize", ("clip",), {}),
      ("pad", (4,), {"key": "prompt", "pad_id": 1})]
  with pytest.raises(ConfigError, match=r"cannot parse op 'resize\(224'"):
    ops.parse_spec("decode|resize(224")
  with pytest.raises(ConfigError, match=r"cannot parse op .*"):
    ops.parse_spec("resize(size=x)")  # Not a literal.
  with pytest.raises(UnknownNameError, match="unknown pp op 'resise'.*'resize'"):
    ops.get_preprocess("decode|resise(3)")
  with pytest.raises(ConfigError, match="pp op resize"):
    ops.get_preprocess("resize(1, 2, 3, 4, 5)")
  assert {"decode", "resize", "inception_crop", "normalize", "tokenize", "pad"} <= set(PP_OPS.names())


def test_op_from_another_module_by_module_colon_name(tmp_path, monkeypatch):
  (tmp_path / "my_pp_ops.py").write_text(
      "from rew_jax.registry import PP_OPS\n"
      "@PP_OPS.register('times')\n"
      "def get_times(k, key='x'):\n"
      "  def op(ex, rng):\n"
      "    return dict(ex, **{key: ex[key] * k})\n"
      "  return op\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  assert ops.parse_spec("my_pp_ops:times(3, key='x')") == [
      ("my_pp_ops:times", (3,), {"key": "x"})]
  assert run("my_pp_ops:times(3)", {"x": 2})["x"] == 6
  with pytest.raises(ConfigError, match="is not an op name"):
    ops.parse_spec("my pp:times(3)")


def test_decode_png_exact_and_grey_to_rgb():
  img = gradient()
  out = run("decode", {"image": encode(img)})
  np.testing.assert_array_equal(out["image"], img)
  grey = run("decode", {"image": encode(np.full((3, 4), 9, np.uint8))})["image"]
  assert grey.shape == (3, 4, 3) and (grey == 9).all()
  jpg = run("decode", {"image": encode(np.full((16, 16, 3), 128, np.uint8), "JPEG")})["image"]
  assert abs(int(jpg.mean()) - 128) <= 1


def test_decode_corrupt_raises_or_counts():
  data = encode(gradient(), "JPEG")[:40]
  with pytest.raises(ops.ImageDecodeError, match=r"^shard s record 3: cannot decode image \(40 bytes"):
    run("decode", {"image": data, "_where": "shard s record 3"})
  out = run("decode", {"image": b"garbage", "_on_error": "skip"})
  assert out["_skipped"] == 1 and out["image"].shape == (1, 1, 3) and not out["image"].any()
  out = run("decode(on_error='skip')", {"image": b"garbage"})
  assert out["_skipped"] == 1
  # Placeholders (eval padding) never touch the bytes.
  assert run("decode", {"image": b"", "_placeholder": 1})["image"].shape == (1, 1, 3)


def test_resize_and_crops():
  img = gradient(6, 8)
  out = run("resize(3)", {"image": img})["image"]
  assert out.shape == (3, 3, 3) and out.dtype == np.uint8
  assert run("resize((4, 16), method='nearest')", {"image": img})["image"].shape == (4, 16, 3)
  small = run("resize_small(3)", {"image": img})["image"]
  assert small.shape == (3, 4, 3)
  crop = run("central_crop((2, 4))", {"image": img})["image"]
  np.testing.assert_array_equal(crop, img[2:4, 2:6])
  assert run("resize_crop(4)", {"image": img})["image"].shape == (4, 4, 3)
  with pytest.raises(ValueError, match="resize_small first"):
    run("central_crop(10)", {"image": img})


def test_jpeg_decoding_gives_pillows_pixels():
  # JPEGs decode through simplejpeg (libjpeg-turbo, GIL released): the same pixels as
  # Pillow's decoder, for colour and grey; CMYK and other formats go through Pillow.
  rng = np.random.default_rng(1)
  noisy = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
  for array in (noisy, noisy[..., 0]):
    data = encode(array, "JPEG")
    pillow = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    out = run("decode", {"image": data})["image"]
    assert out.shape == (37, 53, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, pillow)
  buf = io.BytesIO()
  Image.fromarray(noisy).convert("CMYK").save(buf, format="JPEG")
  cmyk = run("decode", {"image": buf.getvalue()})["image"]
  np.testing.assert_array_equal(cmyk, np.asarray(Image.open(io.BytesIO(buf.getvalue()))
                                                 .convert("RGB")))
  truncated = encode(noisy, "JPEG")[:200]
  with pytest.raises(ops.ImageDecodeError, match="record 9: cannot decode"):
    run("decode", {"image": truncated, "_where": "record 9"})


def test_resize_without_antialias_samples_like_tf():
  # Downscaling 8 → 2 without antialiasing samples each output at the source point
  # (i + 0.5)·4 − 0.5 = 1.5 or 5.5: the mean of one 2×2 block, the other 12 pixels unread
  # (tf.image.resize's default). Pillow's antialiased filter reads all of them.
  img = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
  img = np.repeat(img[..., None], 3, axis=-1)
  out = run("resize(2, antialias=False)", {"image": img})["image"]
  expected = [[img[r:r + 2, c:c + 2, 0].mean() for c in (1, 5)] for r in (1, 5)]
  assert out.shape == (2, 2, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[..., 0], expected)
  assert (out[..., 0] != run("resize(2)", {"image": img})["image"][..., 0]).any()
  # On a smooth picture both agree to about a grey level; a constant stays constant.
  yy, xx = np.mgrid[0:60, 0:80]
  smooth = np.stack([xx * 3, yy * 4, xx + yy], -1).astype(np.uint8)
  for spec in ("resize(24, antialias=False)", "inception_crop(24, antialias=False)"):
    a = run(spec, {"image": smooth}, seed=5)["image"]
    b = run(spec.replace(", antialias=False", ""), {"image": smooth}, seed=5)["image"]
    assert a.shape == b.shape == (24, 24, 3)
    assert np.abs(a.astype(float) - b).mean() < 2.0
  flat = np.full((30, 40, 3), 77, np.uint8)
  assert (run("inception_crop(8, antialias=False)", {"image": flat})["image"] == 77).all()


def test_inception_box_statistics():
  rng = np.random.default_rng(0)
  boxes = np.array([ops.sample_inception_box(100, 200, rng) for _ in range(2000)])
  top, left, h, w = boxes.T
  assert (top >= 0).all() and (left >= 0).all() and (top + h <= 100).all() and (left + w <= 200).all()
  area = h * w / 20000
  assert area.min() >= 0.075 and area.max() <= 1.0
  sampled = area < 1.0  # The rest fell back to the whole (2:1) image.
  assert sampled.mean() > 0.9
  ratio = (w / h)[sampled]
  assert ratio.min() > 0.7 and ratio.max() < 1.4
  # On a square image, areas are uniform in [0.08, 1] minus the rejected too-wide/too-tall
  # crops near full area: mean a little under 0.54.
  box = np.array([ops.sample_inception_box(200, 200, rng) for _ in range(2000)])
  assert 0.42 < (box[:, 2] * box[:, 3] / 40000).mean() < 0.54
  # Impossible constraints fall back to the whole image.
  assert ops.sample_inception_box(10, 10, rng, area_range=(2.0, 3.0)) == (0, 0, 10, 10)


def test_inception_crop_values_and_determinism():
  img = gradient(60, 80)
  a = run("inception_crop(16)", {"image": img}, seed=3)["image"]
  b = run("inception_crop(16)", {"image": img}, seed=3)["image"]
  c = run("inception_crop(16)", {"image": img}, seed=4)["image"]
  assert a.shape == (16, 16, 3) and (a == b).all() and not (a == c).all()
  # A full-area crop of a constant image is that constant.
  flat = np.full((30, 40, 3), 77, np.uint8)
  out = run("inception_crop(8, area_min=100)", {"image": flat})["image"]
  assert (out == 77).all()


def test_normalize_flip_value_range():
  img = np.array([[[0, 128, 255]]], np.uint8)
  out = run("normalize('clip')", {"image": img})["image"]
  expected = (np.array([0, 128, 255]) / 255 - np.array(ops.CLIP_MEAN)) / np.array(ops.CLIP_STD)
  np.testing.assert_allclose(out[0, 0], expected, rtol=1e-5)
  assert out.dtype == np.float32
  out = run("normalize(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))", {"image": img})["image"]
  np.testing.assert_allclose(out[0, 0], [-2.0, 0.00784314, 2.0], rtol=1e-4)
  np.testing.assert_allclose(run("value_range(-1, 1)", {"image": img})["image"][0, 0],
                             [-1, 0.00392157, 1], rtol=1e-4)
  # Whole images take the row-tiled path: the same values as the formula, per channel.
  big = np.random.default_rng(0).integers(0, 256, (31, 45, 3), dtype=np.uint8)
  for image in (big, big[:, ::-1]):  # Contiguous, and a flipped view.
    out = run("normalize('clip')", {"image": image})["image"]
    expected = (image / 255 - np.array(ops.CLIP_MEAN)) / np.array(ops.CLIP_STD)
    assert out.shape == image.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  img = gradient(2, 3)
  flips = {run("flip_lr", {"image": img}, seed=s)["image"][0, 0, 0] for s in range(20)}
  assert flips == {0, 20}


def test_tokenize_pad_prompt():
  ex = {"task": "qa", "prompt": "What colour?", "target": "Red brick"}
  out = run("task_prompt({'qa': 'question: {prompt}'})|"
            "tokenize(key='prompt', bos=True)|pad(6, key='prompt')|"
            f"tokenize(key='target', eos=True)|pad(3, key='target', keep_eos={EOS})", ex)
  # question : what colour ? → 3160 1024 2054 6120 1029
  np.testing.assert_array_equal(out["prompt"], [101, 3160, 1024, 2054, 6120, 1029])
  np.testing.assert_array_equal(out["target"], [2417, 5318, 102])
  out = run(f"tokenize(key='target', eos=True, bos=True)|pad(6, key='target', keep_eos={EOS})",
            {"target": "Red brick"})
  np.testing.assert_array_equal(out["target"], [101, 2417, 5318, 102, 0, 0])
  assert out["target"].dtype == np.int32
  out = run("tokenize(key='target', eos=True, max_len=3)", {"target": "red brick wall"})
  np.testing.assert_array_equal(out["target"], [2417, 5318, 102])
  assert out["target_truncated"] == 1  # Nothing is cut without being flagged.
  # Precomputed ids (ALD codes) win over the text.
  out = run("tokenize(key='target', bos=True, eos=True)", {"target": "x", "target_ids": [5, 6]})
  np.testing.assert_array_equal(out["target"], [101, 5, 6, 102])
  assert "target_ids" not in out
  out = run("copy('target', 'label')|keep('label')|drop('nothing')", {"target": "a", "_where": "w"})
  assert out == {"label": "a", "_where": "w"}


def test_pad_flags_truncation_and_honours_a_per_example_limit():
  pp = f"tokenize(key='target', eos=True)|pad(6, key='target', keep_eos={EOS})"
  out = run(pp, {"target": "red brick"})
  np.testing.assert_array_equal(out["target"], [2417, 5318, 102, 0, 0, 0])
  assert out["target_truncated"] == 0 and out["target_truncated"].dtype == np.int32
  out = run(pp, {"target": "red brick wall by the sea"})  # 6 words + EOS > 6.
  np.testing.assert_array_equal(out["target"], [2417, 5318, 2813, 2011, 1996, 102])
  assert out["target_truncated"] == 1
  # The task mixture's per-task length (`_target_len`): cut at 3, still padded to 6.
  out = run(pp, {"target": "red brick wall", "_target_len": 3})
  np.testing.assert_array_equal(out["target"], [2417, 5318, 102, 0, 0, 0])
  assert out["target_truncated"] == 1
  out = run(pp, {"target": "red", "_target_len": 3})
  assert out["target"].tolist() == [2417, 102, 0, 0, 0, 0] and out["target_truncated"] == 0
  out = run("tokenize(key='prompt', bos=True)|pad(3, key='prompt')", {"prompt": "a b c d"})
  assert out["prompt"].tolist() == [101, 1037, 1038] and out["prompt_truncated"] == 1


def test_preprocess_pickles_as_spec():
  pp = ops.get_preprocess("decode|resize(4)|normalize('clip')")
  clone = pickle.loads(pickle.dumps(pp))
  assert clone.spec == pp.spec
  ex = {"image": encode(gradient())}
  np.testing.assert_array_equal(clone(dict(ex))["image"], pp(dict(ex))["image"])


def test_decode_inception_crop_matches_unfused():
  yy, xx = np.mgrid[0:600, 0:800]
  smooth = np.stack([xx * 255 // 800, yy * 255 // 600, (xx + yy) * 255 // 1400], -1).astype(np.uint8)
  data = encode(smooth, "JPEG")
  for spec_args, tol in (("(224, area_min=90)", 3.0), ("(224, area_max=10)", 0.0)):
    # area_min=90: decoded at 1/2 scale (window >= 448 px); area_max=10: full scale, identical.
    fused = run("decode_inception_crop" + spec_args, {"image": data}, seed=1)["image"]
    unfused = run("decode|inception_crop" + spec_args, {"image": data}, seed=1)["image"]
    assert fused.shape == unfused.shape == (224, 224, 3)
    assert np.abs(fused.astype(float) - unfused).mean() <= tol
  # Without antialiasing too: identical at full scale, close at 1/2 scale.
  for spec_args, tol in (("(224, area_min=90, antialias=False)", 3.0),
                         ("(224, area_max=10, antialias=False)", 0.0)):
    fused = run("decode_inception_crop" + spec_args, {"image": data}, seed=1)["image"]
    unfused = run("decode|inception_crop" + spec_args, {"image": data}, seed=1)["image"]
    assert fused.shape == unfused.shape == (224, 224, 3)
    assert np.abs(fused.astype(float) - unfused).mean() <= tol
  png_out = run("decode_inception_crop(16)", {"image": encode(gradient(60, 80))}, seed=2)["image"]
  np.testing.assert_array_equal(png_out, run("decode|inception_crop(16)",
                                             {"image": encode(gradient(60, 80))}, seed=2)["image"])
  with pytest.raises(ops.ImageDecodeError, match="record 5: cannot decode"):
    run("decode_inception_crop(8)", {"image": b"junk", "_where": "record 5"})
  out = run("decode_inception_crop(8)", {"image": b"junk", "_on_error": "skip"})
  assert out["_skipped"] == 1 and out["image"].shape == (8, 8, 3)
