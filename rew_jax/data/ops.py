"""Preprocessing ops (numpy/PIL), registered by name and composed from a string spec.

A spec is a big_vision-style pipe of op calls with Python-literal arguments:

    "decode|inception_crop(224)|normalize('clip')|"
    "tokenize(key='prompt', bos=True)|pad(20, key='prompt')|"
    "tokenize(key='target', eos=True)|pad(16, key='target')"

Each registered name is a factory returning an op `op(example, rng) -> example`, where
`example` is a dict and `rng` a `np.random.Generator` (Grain's per-element generator, so that
random ops are reproducible and exact on resume). Deterministic ops ignore `rng`.

Keys the pipeline may set for the ops:
  `_where`       "shard S record I", for error messages;
  `_on_error`    "raise" | "skip": what `decode` does with bytes it cannot decode;
  `_skipped`     set when a record was skipped; `decode` then yields a black image so the
                 example keeps its shape and is masked out of the batch;
  `_placeholder` set on eval padding examples (same treatment, not counted as skipped).

`get_preprocess(spec)` returns a picklable callable (it pickles as its spec), so it can be
sent to Grain worker processes.
"""

from __future__ import annotations

import ast
import re
import io
import logging
from typing import Any, Callable, Sequence

import numpy as np
import simplejpeg
from PIL import Image

from rew_jax.errors import ConfigError, UserError
from rew_jax.registry import PP_OPS

Example = dict[str, Any]
Op = Callable[[Example, np.random.Generator], Example]

# CLIP's image statistics (OpenAI CLIP preprocessing), used by GIT/GER image encoders.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_STATS = {"clip": (CLIP_MEAN, CLIP_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
          "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}
_METHODS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
            "area": Image.BOX, "lanczos": Image.LANCZOS}


class ImageDecodeError(UserError):
  """Image bytes that PIL cannot decode, named by record."""


class PreprocessError(ConfigError):
  """A malformed pp spec."""


# --------------------------------------------------------------------------------------------
# Spec parsing and composition.
# --------------------------------------------------------------------------------------------


_OP_NAME = re.compile(r"^([A-Za-z_][\w.]*:)?[A-Za-z_]\w*$")


def parse_spec(spec: str) -> list[tuple[str, tuple, dict]]:
  """`"a(1)|b(k=2)|c"` → [("a", (1,), {}), ("b", (), {"k": 2}), ("c", (), {})].

  An op registered outside the package is named `some.module:op(...)`.
  """
  calls = []
  for part in spec.split("|"):
    part = part.strip()
    if not part:
      continue
    name, paren, rest = part.partition("(")
    name = name.strip()
    try:
      if not _OP_NAME.match(name):
        raise ValueError(f"{name!r} is not an op name (name or module:name)")
      node = ast.parse("op" + paren + rest if paren else "op()", mode="eval").body
      if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError("expected name(args)")
      args = tuple(ast.literal_eval(a) for a in node.args)
      kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    except (SyntaxError, ValueError) as e:
      raise PreprocessError(f"pp spec {spec!r}: cannot parse op {part!r} ({e})") from None
    calls.append((name, args, kwargs))
  return calls


class Preprocess:
  """The ops of a spec applied in order; pickles as its spec."""

  def __init__(self, spec: str):
    self.spec = spec
    self._ops = []
    for name, args, kwargs in parse_spec(spec):
      factory = PP_OPS.get(name)
      try:
        self._ops.append(factory(*args, **kwargs))
      except TypeError as e:
        raise PreprocessError(f"pp op {name}{args or ''}{kwargs or ''}: {e}") from None

  def __call__(self, example: Example, rng: np.random.Generator | None = None) -> Example:
    rng = rng if rng is not None else np.random.default_rng(0)
    for op in self._ops:
      example = op(example, rng)
    return example

  def __getstate__(self):
    return {"spec": self.spec}

  def __setstate__(self, state):
    self.__init__(state["spec"])

  def __repr__(self) -> str:
    return f"Preprocess({self.spec!r})"


def get_preprocess(spec: str) -> Preprocess:
  return Preprocess(spec)


# --------------------------------------------------------------------------------------------
# Images.
# --------------------------------------------------------------------------------------------


def _size2(size) -> tuple[int, int]:
  """(height, width) from an int or a pair."""
  if isinstance(size, int):
    return size, size
  h, w = size
  return int(h), int(w)


_CV2 = None


def _cv2():
  """OpenCV, imported on first use. Its own thread pool is set to one thread: the pipeline
  runs one image per Grain thread, and nested pools only oversubscribe the cores."""
  global _CV2
  if _CV2 is None:
    import cv2  # pylint: disable=g-import-not-at-top
    cv2.setNumThreads(1)
    _CV2 = cv2
  return _CV2


_CV2_METHODS = {"bilinear": "INTER_LINEAR", "bicubic": "INTER_CUBIC", "nearest": "INTER_NEAREST",
                "area": "INTER_AREA", "lanczos": "INTER_LANCZOS4"}


def _resize(img: np.ndarray, hw: tuple[int, int], method: str, box=None,
            antialias: bool = True) -> np.ndarray:
  """Resizes `img` (or its `box` = (left, top, right, bottom) window) to `hw`.

  antialias=True: Pillow, whose filters widen with the downscaling factor. antialias=False:
  OpenCV's fixed-support kernels on the window rounded to whole pixels, as
  tf.image.resize(antialias=False) (big_vision's inception crop) does; about 8x faster.
  """
  if method not in _METHODS:
    raise PreprocessError(f"unknown resize method {method!r}; known: {sorted(_METHODS)}")
  h, w = hw
  if box is None and img.shape[:2] == (h, w):
    return img
  if antialias:
    return np.asarray(Image.fromarray(img).resize((w, h), _METHODS[method], box=box))
  if box is not None:
    left, top, right, bottom = (int(round(v)) for v in box)
    img = img[top:max(bottom, top + 1), left:max(right, left + 1)]
  cv2 = _cv2()
  out = cv2.resize(img, (w, h), interpolation=getattr(cv2, _CV2_METHODS[method]))
  return out[..., None] if out.ndim == 2 and img.ndim == 3 else out


def _to_rgb(array: np.ndarray) -> np.ndarray:
  array = np.asarray(array, np.uint8)
  if array.ndim == 2:
    array = array[..., None]
  if array.shape[-1] == 1:
    array = np.repeat(array, 3, axis=-1)
  elif array.shape[-1] == 4:
    array = array[..., :3]
  return array


def _is_placeholder(example: Example) -> bool:
  return bool(example.get("_skipped") or example.get("_placeholder"))


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
  """(height, width) of a YCbCr or grey JPEG; None for anything else (PNG, CMYK, junk)."""
  try:
    height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
  except ValueError:
    return None
  return (height, width) if colorspace in ("YCbCr", "Gray") else None


def _decode_jpeg(data: bytes, factor: int = 1) -> np.ndarray | None:
  """RGB pixels of a YCbCr or grey JPEG at 1/`factor` scale (1, 2, 4 or 8), or None (not
  such a JPEG, or corrupt: Pillow then decodes it or names the error).

  libjpeg-turbo through simplejpeg: the same pixels as Pillow (the same library and
  settings), straight into numpy, with the GIL released while it decodes.
  """
  size = _jpeg_size(data)
  if size is None:
    return None
  # The smallest DCT scale at least 1/factor of the size is exactly 1/factor (power-of-two
  # scales are libjpeg-turbo's SIMD ones).
  scaled = {} if factor == 1 else dict(min_height=-(-size[0] // factor),
                                       min_width=-(-size[1] // factor))
  try:
    return simplejpeg.decode_jpeg(data, colorspace="RGB", **scaled)
  except ValueError:
    return None


@PP_OPS.register("decode")
def get_decode(key: str = "image", on_error: str | None = None) -> Op:
  """Encoded bytes → uint8 [H, W, 3] RGB. Undecodable bytes raise or are a counted skip.

  An already decoded uint8 array (grey, RGB or RGBA) passes through as RGB.

  `on_error` None defers to the pipeline's `example["_on_error"]` (default "raise").
  """

  def decode(example, rng):
    del rng
    if _is_placeholder(example):
      example[key] = np.zeros((1, 1, 3), np.uint8)
      return example
    data = example[key]
    if isinstance(data, np.ndarray):  # Already decoded (e.g. by tfds.data_source).
      example[key] = _to_rgb(data)
      return example
    array = _decode_jpeg(data)
    if array is not None:
      example[key] = array
      return example
    try:
      with Image.open(io.BytesIO(data)) as img:
        img.load()
        array = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError...).
      where = example.get("_where") or f"image {example.get('image_id', '?')!r}"
      message = f"{where}: cannot decode image ({len(data)} bytes; {type(e).__name__}: {e})"
      if (on_error or example.get("_on_error", "raise")) != "skip":
        raise ImageDecodeError(message) from None
      logging.warning("skipped record: %s", message)
      example["_skipped"] = 1
      array = np.zeros((1, 1, 3), np.uint8)
    example[key] = array
    return example

  return decode


@PP_OPS.register("resize")
def get_resize(size, key: str = "image", method: str = "bilinear",
               antialias: bool = True) -> Op:
  """Resizes to `size` (int → square, or (h, w)), ignoring aspect ratio."""
  hw = _size2(size)

  def resize(example, rng):
    del rng
    example[key] = _resize(example[key], hw, method, antialias=antialias)
    return example

  return resize


@PP_OPS.register("resize_small")
def get_resize_small(size: int, key: str = "image", method: str = "bilinear") -> Op:
  """Resizes so that the shorter side is `size`, keeping the aspect ratio."""

  def resize_small(example, rng):
    del rng
    img = example[key]
    h, w = img.shape[:2]
    scale = size / min(h, w)
    example[key] = _resize(img, (max(1, round(h * scale)), max(1, round(w * scale))), method)
    return example

  return resize_small


@PP_OPS.register("central_crop")
def get_central_crop(size, key: str = "image") -> Op:
  """The centred (h, w) window; the image must be at least that large."""
  ch, cw = _size2(size)

  def central_crop(example, rng):
    del rng
    img = example[key]
    h, w = img.shape[:2]
    if h < ch or w < cw:
      raise ValueError(f"central_crop({size}) of a {h}x{w} image: resize_small first")
    top, left = (h - ch) // 2, (w - cw) // 2
    example[key] = img[top:top + ch, left:left + cw]
    return example

  return central_crop


@PP_OPS.register("resize_crop")
def get_resize_crop(size, key: str = "image", method: str = "bicubic") -> Op:
  """Eval geometry: shorter side to `size`, then the centred square (resize + centre crop)."""
  small, crop = get_resize_small(max(_size2(size)), key, method), get_central_crop(size, key)
  return lambda example, rng: crop(small(example, rng), rng)


def sample_inception_box(h: int, w: int, rng: np.random.Generator, area_range=(0.08, 1.0),
                         ratio_range=(3 / 4, 4 / 3), attempts: int = 10) -> tuple[int, int, int, int]:
  """A random (top, left, height, width) window as in Inception/GER-ALD pretraining.

  Area fraction uniform in `area_range`, log-aspect uniform in `ratio_range`; after
  `attempts` misses, the whole image (as TF's sample_distorted_bounding_box falls back to).
  """
  area = h * w
  log_lo, log_hi = np.log(ratio_range[0]), np.log(ratio_range[1])
  for _ in range(attempts):
    target = area * rng.uniform(*area_range)
    ratio = np.exp(rng.uniform(log_lo, log_hi))
    cw = int(round(np.sqrt(target * ratio)))
    ch = int(round(np.sqrt(target / ratio)))
    if 0 < cw <= w and 0 < ch <= h:
      top = int(rng.integers(0, h - ch + 1))
      left = int(rng.integers(0, w - cw + 1))
      return top, left, ch, cw
  return 0, 0, h, w


@PP_OPS.register("inception_crop")
def get_inception_crop(size, area_min: float = 8, area_max: float = 100, key: str = "image",
                       method: str = "bilinear", antialias: bool = True) -> Op:
  """Random crop of `area_min`..`area_max` percent of the image, resized to `size`
  (`antialias=False`: as tf.image.resize's default, see `_resize`)."""
  hw = _size2(size)
  area_range = (area_min / 100, area_max / 100)

  def inception_crop(example, rng):
    img = example[key]
    top, left, ch, cw = sample_inception_box(img.shape[0], img.shape[1], rng, area_range)
    # Crop and resize in one call (the box is in source pixels).
    example[key] = _resize(img, hw, method, box=(left, top, left + cw, top + ch),
                           antialias=antialias)
    return example

  return inception_crop


@PP_OPS.register("decode_inception_crop")
def get_decode_inception_crop(size, area_min: float = 8, area_max: float = 100, key: str = "image",
                              method: str = "bilinear", on_error: str | None = None,
                              antialias: bool = True) -> Op:
  """`decode|inception_crop(size)` fused: samples the window from the JPEG header, then lets
  libjpeg decode at 1/2, 1/4 or 1/8 scale when the window stays >= `size` at that scale.

  Same window distribution as the unfused ops; on large web images it skips most of the
  decoding work (as tf.image.decode_and_crop_jpeg does). Errors behave as in `decode`.
  The reduced-scale decode averages whole DCT blocks, so what is left to resize shrinks by
  less than 2x: `antialias=False` (the default train spec) then loses little and resizes
  about 8x faster.
  """
  hw = _size2(size)
  area_range = (area_min / 100, area_max / 100)
  decode = get_decode(key, on_error)

  def unfused(example, rng):
    example = decode(example, rng)
    img = example[key]
    top, left, ch, cw = sample_inception_box(img.shape[0], img.shape[1], rng, area_range)
    example[key] = _resize(img, hw, method, box=(left, top, left + cw, top + ch),
                           antialias=antialias)
    return example

  def decode_inception_crop(example, rng):
    data = example[key]
    if _is_placeholder(example) or isinstance(data, np.ndarray):
      return unfused(example, rng)
    size = _jpeg_size(data)
    if size is None:  # Not a JPEG that simplejpeg decodes (PNG, CMYK, junk): unfused ops.
      return unfused(example, rng)
    height, width = size
    top, left, ch, cw = sample_inception_box(height, width, rng, area_range)
    shrink = min(ch / hw[0], cw / hw[1])
    img = _decode_jpeg(data, next((f for f in (8, 4, 2) if f <= shrink), 1))
    if img is None:  # A corrupt body: as above.
      return unfused(example, rng)
    sx, sy = img.shape[1] / width, img.shape[0] / height
    box = (left * sx, top * sy, (left + cw) * sx, (top + ch) * sy)
    example[key] = _resize(img, hw, method, box=box, antialias=antialias)
    return example

  return decode_inception_crop


@PP_OPS.register("flip_lr")
def get_flip_lr(key: str = "image") -> Op:
  """Mirrors the image left–right with probability 1/2."""

  def flip_lr(example, rng):
    if rng.random() < 0.5:
      example[key] = example[key][:, ::-1]
    return example

  return flip_lr


@PP_OPS.register("normalize")
def get_normalize(mean="clip", std=None, key: str = "image") -> Op:
  """uint8 → float32 `(x/255 - mean) / std`; `mean` may name a preset (clip, imagenet, half)."""
  if isinstance(mean, str):
    if mean not in _STATS:
      raise PreprocessError(f"unknown normalize preset {mean!r}; known: {sorted(_STATS)}")
    mean, std = _STATS[mean]
  # (x/255 - mean)/std folded into one multiply-add: two passes over the image, not four.
  scale = (1 / (255 * np.asarray(std, np.float64))).astype(np.float32)
  offset = (-np.asarray(mean, np.float64) / np.asarray(std, np.float64)).astype(np.float32)
  rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # width → (scale, offset) per row.

  def normalize(example, rng):
    del rng
    img = np.asarray(example[key])
    if img.ndim == 3 and img.shape[-1] == scale.size:
      # numpy loops over the innermost axis: broadcasting a 3-vector makes that loop 3 long
      # (about 9x slower at 224²). A [W·3] row repeated per channel keeps it W·3 long.
      h, w, c = img.shape
      if w not in rows:
        rows[w] = np.tile(scale, w), np.tile(offset, w)
      row_scale, row_offset = rows[w]
      x = np.multiply(img.reshape(h, w * c), row_scale, dtype=np.float32)
      x += row_offset
      x = x.reshape(h, w, c)
    else:
      x = np.multiply(img, scale, dtype=np.float32)
      x += offset
    example[key] = x
    return example

  return normalize


@PP_OPS.register("value_range")
def get_value_range(vmin: float = -1, vmax: float = 1, key: str = "image") -> Op:
  """uint8 [0, 255] → float32 [vmin, vmax]."""

  def value_range(example, rng):
    del rng
    x = np.asarray(example[key], np.float32) / 255
    example[key] = x * (vmax - vmin) + vmin
    return example

  return value_range


# --------------------------------------------------------------------------------------------
# Text.
# --------------------------------------------------------------------------------------------


@PP_OPS.register("task_prompt")
def get_task_prompt(templates: dict[str, str] | None = None, default: str = "{prompt}") -> Op:
  """Formats `prompt` with a per-task template, e.g. {'caption': 'a picture of {prompt}'}.

  Templates see `{prompt}` (the mixture's prompt, its per-task prefix already applied) and
  `{task}`. Tasks without a template use `default`.
  """
  templates = dict(templates or {})

  def task_prompt(example, rng):
    del rng
    task = example.get("task", "")
    example["prompt"] = templates.get(task, default).format(prompt=example.get("prompt", ""),
                                                            task=task)
    return example

  return task_prompt


@PP_OPS.register("tokenize")
def get_tokenize(key: str = "target", out: str | None = None, tokenizer: str = "bert",
                 path: str | None = None, bos: bool = False, eos: bool = False,
                 max_len: int | None = None) -> Op:
  """Text at `key` → int32 ids at `out` (default: same key), optionally BOS/EOS-wrapped.

  A precomputed id list at `<key>_ids` (e.g. an entity's ALD code) is used instead of the
  text. `max_len` truncates the body so that BOS/EOS still fit, and then sets
  `<out>_truncated` to 1 (see `pad`): nothing is cut without being counted.
  """
  from rew_jax.data.tokenizers import load_tokenizer  # pylint: disable=g-import-not-at-top
  out = out or key
  tok = load_tokenizer(tokenizer, path)
  ids_key = f"{key}_ids"

  def tokenize(example, rng):
    del rng
    if ids_key in example:
      ids = [int(i) for i in example.pop(ids_key)]
    else:
      ids = tok.encode(example[key])
    if max_len is not None and len(ids) > max(0, max_len - bos - eos):
      ids = ids[:max(0, max_len - bos - eos)]
      example[f"{out}_truncated"] = np.int32(1)
    example[out] = np.asarray(([tok.bos_id] if bos else []) + ids + ([tok.eos_id] if eos else []),
                              np.int32)
    return example

  return tokenize


@PP_OPS.register("pad")
def get_pad(length: int, key: str = "target", pad_id: int = 0, keep_eos: int | None = None) -> Op:
  """Pads (or truncates) the 1-D array at `key` to `length`.

  A per-example limit `_<key>_len` (> 0; the task mixture sets `_target_len` from
  `tasks.TASK.target_len`, so that each task has its own target length) truncates it first to
  that many ids. `keep_eos=<id>`: a truncated sequence still ends with that id, so the model
  learns to stop. `<key>_truncated` (int32, 0 or 1) says whether anything was cut, here or by
  `tokenize(max_len=...)`: the train loop and `SkipReport` count them per task.
  """

  def pad(example, rng):
    del rng
    x = np.asarray(example[key])
    limit = min(length, int(example.get(f"_{key}_len") or length))
    truncated = int(example.get(f"{key}_truncated", 0))
    if len(x) > limit:
      x = x[:limit].copy()
      truncated = 1
      if keep_eos is not None:
        x[-1] = keep_eos
    if len(x) < length:
      x = np.concatenate([x, np.full(length - len(x), pad_id, x.dtype)])
    example[key] = x
    example[f"{key}_truncated"] = np.int32(truncated)
    return example

  return pad


# --------------------------------------------------------------------------------------------
# Structure.
# --------------------------------------------------------------------------------------------


@PP_OPS.register("keep")
def get_keep(*keys: str) -> Op:
  """Keeps only `keys` (and the pipeline's private `_` keys)."""
  wanted = set(keys)

  def keep(example, rng):
    del rng
    return {k: v for k, v in example.items() if k in wanted or k.startswith("_")}

  return keep


@PP_OPS.register("drop")
def get_drop(*keys: str) -> Op:

  def drop(example, rng):
    del rng
    return {k: v for k, v in example.items() if k not in keys}

  return drop


@PP_OPS.register("copy")
def get_copy(inkey: str, outkey: str) -> Op:

  def copy(example, rng):
    del rng
    example[outkey] = example[inkey]
    return example

  return copy


def names() -> Sequence[str]:
  return PP_OPS.names()
