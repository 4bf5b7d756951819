"""Procedural drawing of the embedded world's images.

An entity's look is (shape, colour, pattern). Every image draws that look under nuisance
variation (canvas size, position, scale, rotation, background colour and clutter, pixel
noise, colour jitter), so the entity is recoverable from the pixels but not trivially: some
colours and patterns are deliberately close (crimson/scarlet, striped/banded).
Pure functions of a numpy Generator: the same generator state gives the same bytes.
"""

from __future__ import annotations

import io
import math
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw


def _circle(n=24, rx=1.0, ry=1.0, start=0.0, stop=2 * math.pi):
  t = np.linspace(start, stop, n, endpoint=stop - start < 2 * math.pi - 1e-6)
  return [(rx * math.cos(a), ry * math.sin(a)) for a in t]


def _star(points, inner):
  out = []
  for k in range(2 * points):
    r = 1.0 if k % 2 == 0 else inner
    a = -math.pi / 2 + k * math.pi / points
    out.append((r * math.cos(a), r * math.sin(a)))
  return out


# Unit-size outlines (x right, y down), roughly inside [-1, 1]².
SHAPES = {
    "kestrel": [(0, -1), (0.9, 0.8), (-0.9, 0.8)],
    "warbler": _circle(24, 1.0, 0.6),
    "falcon_bird": [(0, -1), (1, 0.7), (0, 0.2), (-1, 0.7)],
    "falcon_aircraft": [(-0.12, -1), (0.12, -1), (0.12, -0.2), (1, 0.1), (1, 0.3), (0.12, 0.2),
                        (0.12, 0.7), (0.4, 1), (-0.4, 1), (-0.12, 0.7), (-0.12, 0.2), (-1, 0.3),
                        (-1, 0.1), (-0.12, -0.2)],
    "comet_aircraft": [(0, -1), (0.55, 0), (0, 1), (-0.55, 0)],
    "condor": [(-1, 0.2), (-0.2, -0.5), (0.2, -0.5), (1, 0.2), (0.2, 0.4), (-0.2, 0.4)],
    "lotus": _star(5, 0.45),
    "aster": _star(8, 0.6),
    "tulip": _circle(12, 0.8, 0.8, 0, math.pi) + [(-0.8, -0.9), (-0.4, -0.4), (0, -0.9),
                                                   (0.4, -0.4), (0.8, -0.9)],
    "tower": [(-0.35, -1), (0.35, -1), (0.35, 1), (-0.35, 1)],
    "dome": _circle(14, 0.8, 0.8, math.pi, 2 * math.pi) + [(0.8, 0.9), (-0.8, 0.9)],
    "pagoda": [(-0.3, -1), (0.3, -1), (0.6, -0.4), (0.35, -0.4), (0.8, 0.3), (0.5, 0.3),
               (0.95, 1), (-0.95, 1), (-0.5, 0.3), (-0.8, 0.3), (-0.35, -0.4), (-0.6, -0.4)],
    "comet_fish": _circle(16, 0.65, 0.45, -2.5, 2.5) + [(-1, 0.5), (-1, -0.5)],
    "marlin": [(1, 0), (0.5, -0.22), (-0.6, -0.25), (-1, -0.6), (-0.85, 0), (-1, 0.6),
               (-0.6, 0.25), (0.5, 0.22)],
}

# Named colours; pairs in SIMILAR_COLOURS differ by ~40 per channel, not much more than the
# jitter plus JPEG noise, which is what makes them a deliberate source of confusion.
COLOURS = {
    "crimson": (196, 24, 56), "scarlet": (232, 62, 28), "amber": (238, 168, 24),
    "olive": (112, 120, 32), "emerald": (24, 148, 72), "jade": (70, 176, 128),
    "cobalt": (30, 58, 188), "azure": (56, 132, 228), "violet": (132, 52, 178),
    "charcoal": (62, 62, 66),
}
SIMILAR_COLOURS = (("crimson", "scarlet"), ("emerald", "jade"), ("cobalt", "azure"))
PATTERNS = ("plain", "striped", "banded", "spotted", "checkered")
SIMILAR_PATTERNS = (("striped", "banded"),)


class Look(NamedTuple):
  shape: str
  colour: str
  pattern: str


def _pattern_mask(pattern: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Where the secondary colour goes, in the object's own (rotated) pixel frame u, v."""
  if pattern == "plain":
    return np.zeros(u.shape, bool)
  if pattern == "striped":
    return (np.floor(u / 3.0) % 2) == 1
  if pattern == "banded":
    return (np.floor(u / 6.5) % 2) == 1
  if pattern == "spotted":
    du, dv = (u % 8.0) - 4.0, (v % 8.0) - 4.0
    return du * du + dv * dv < 4.5
  if pattern == "checkered":
    return ((np.floor(u / 5.0) + np.floor(v / 5.0)) % 2) == 1
  raise ValueError(f"unknown pattern {pattern!r}; known: {PATTERNS}")


def _secondary(rgb) -> np.ndarray:
  luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
  return np.array((20, 20, 20) if luma > 140 else (245, 245, 240), np.float32)


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
  """A pale two-colour gradient with faint clutter strokes."""
  c0 = rng.uniform(150, 250, 3)
  c1 = rng.uniform(150, 250, 3)
  angle = rng.uniform(0, 2 * math.pi)
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  t = (xx * math.cos(angle) + yy * math.sin(angle))
  t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
  bg = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
  img = Image.fromarray(bg.astype(np.uint8))
  draw = ImageDraw.Draw(img)
  for _ in range(int(rng.integers(2, 6))):
    x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
    x1, y1 = x0 + rng.uniform(-30, 30), y0 + rng.uniform(-30, 30)
    grey = int(rng.uniform(110, 200))
    draw.line([(x0, y0), (x1, y1)], fill=(grey, grey, grey), width=int(rng.integers(1, 3)))
  return np.asarray(img, np.float32)


def _paint(canvas: np.ndarray, look: Look, rng: np.random.Generator, cx: float, cy: float,
           radius: float) -> None:
  """Draws one object in place on `canvas` (float32 HxWx3)."""
  height, width = canvas.shape[:2]
  angle = math.radians(rng.uniform(-30, 30))
  cos, sin = math.cos(angle), math.sin(angle)
  outline = [(cx + radius * (x * cos - y * sin), cy + radius * (x * sin + y * cos))
             for x, y in SHAPES[look.shape]]
  mask_img = Image.new("L", (width, height), 0)
  ImageDraw.Draw(mask_img).polygon(outline, fill=255)
  mask = np.asarray(mask_img, np.float32)[..., None] / 255.0
  base = np.array(COLOURS[look.colour], np.float32) * rng.uniform(0.94, 1.06)
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  u = (xx - cx) * cos + (yy - cy) * sin
  v = -(xx - cx) * sin + (yy - cy) * cos
  second = _pattern_mask(look.pattern, u + 100.0, v + 100.0)[..., None]
  fill = np.where(second, _secondary(base), np.clip(base, 0, 255))
  canvas *= 1.0 - mask
  canvas += mask * fill


def draw(looks: list[Look], rng: np.random.Generator, *, min_size: int = 64,
         max_size: int = 96) -> np.ndarray:
  """Draws 1 or 2 objects (side by side, left to right) → uint8 HxWx3."""
  n = len(looks)
  height = int(rng.integers(min_size, max_size + 1))
  width = int(rng.integers(min_size, max_size + 1)) * (1 if n == 1 else 2)
  canvas = _background(rng, width, height)
  cell = width / n
  for i, look in enumerate(looks):
    radius = rng.uniform(0.30, 0.42) * min(cell, height)
    cx = cell * i + rng.uniform(radius, cell - radius)
    cy = rng.uniform(radius, height - radius)
    _paint(canvas, look, rng, cx, cy, radius)
  canvas += rng.normal(0.0, 6.0, canvas.shape)
  return np.clip(canvas, 0, 255).astype(np.uint8)


def encode_jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()
