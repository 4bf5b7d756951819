"""What the simulated multimodal LLM sees: the look of the object in an image, from pixels.

Hand-written perception, no learned weights, numpy and Pillow only. It receives the encoded
image and nothing else, and returns probabilities over the named shapes, colours and
patterns of the embedded world: the words the knowledge base's summaries describe looks
with (`synthetic_images.SHAPES`, `COLOURS`, `PATTERNS`), never entity ids.

    bytes ──decode──► pixels ──background plane fit──► distance map ──► silhouette
      silhouette ──normalise (centroid, area)──► best IoU with each named outline over 36
                   rotations, solidity next to the outline's ──► p(shape)
      object pixels ──split primary / secondary (white or black)──► least-mixed primary
                   colour ──brightness-free distance to each named colour──► p(colour)
      secondary mask ──area fraction, structure-tensor coherence, FFT period──► p(pattern)

The background is a smooth gradient, so a plane fitted per channel to the image border (with
outliers from the object and clutter dropped) predicts it everywhere; pixels far from that
prediction are the object. A secondary colour close to a pale background is recovered as
near-white pixels enclosed by the object. Shapes are recognised by matching the normalised
silhouette against each named outline (`synthetic_images.SHAPES`, what the shape words
mean) at every rotation, which is rotation- and scale-invariant and uses the whole outline
where moment features summarise it; solidity (area over convex hull) separates notched
outlines from full ones. Colour is matched up to a brightness factor (the drawing jitters
brightness, not hue), from the primary pixels farthest from the secondary colour (thin
stripes and JPEG's halved colour resolution blend the two). Patterns differ in how much
secondary colour there is (spots cover about a fifth of the body, the others half), whether
it is one-directional (stripes, bands) or two-directional (checkers, spots), and its period
(thin stripes repeat every ~6 px, checkers ~7 px along the diagonal, broad bands ~13 px).
Perception is deterministic (a pure function of the bytes) and cached per image.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math

import numpy as np
from PIL import Image, ImageDraw

from rew_jax.data import synthetic_images as si

SHAPES = tuple(si.SHAPES)
COLOURS = tuple(si.COLOURS)
PATTERNS = tuple(si.PATTERNS)
_RGB = np.array([si.COLOURS[c] for c in COLOURS], np.float32)
_WHITE = np.array((245, 245, 240), np.float32)
_BLACK = np.array((20, 20, 20), np.float32)

_GRID = 48            # Side of the normalised silhouette grid.
_GRID_AREA = 400.0    # Silhouette area on that grid.
_ROTATIONS = 36       # Outline templates every 10 degrees: matching is rotation-invariant.
_FG_DISTANCE = 42.0   # RGB distance from the fitted background that counts as object.
_MIN_AREA = 0.01      # An object covers at least this share of the image, else none is seen.
_COLOUR_SIGMA = 14.0  # Spread of the median object colour around its named colour.
_REF_AREA = 200.0     # Object size (pixels) the spreads below are set for: measurements
#                       of a larger object are more precise (noise falls as 1/sqrt(area)).
_SHAPE_TEMPERATURE = 0.025  # Softmax temperature over best IoUs.
_SOLIDITY_SIGMA = 0.12      # Spread of a silhouette's solidity around its outline's.
# Pattern periods (pixels) at this image scale: what "thin", "broad" and "checkered" mean.
_PERIOD = {"striped": 6.0, "banded": 13.0, "checkered": 7.1, "spotted": 8.0}


@dataclasses.dataclass(frozen=True)
class Perception:
  """Distributions over the named shapes, colours and patterns (each sums to 1)."""
  found: bool
  shape: dict
  colour: dict
  pattern: dict
  features: dict = dataclasses.field(default_factory=dict)  # For inspection and tests.

  def best(self, attribute: str) -> str:
    dist = getattr(self, attribute)
    return max(dist, key=dist.get)

  def log_prob(self, shape: str, colour: str, pattern: str) -> float:
    """Log-probability of a described look (attributes treated as independent)."""
    return (math.log(self.shape.get(shape, 0.0) + 1e-6)
            + math.log(self.colour.get(colour, 0.0) + 1e-6)
            + math.log(self.pattern.get(pattern, 0.0) + 1e-6))


def _uniform(names) -> dict:
  return {n: 1.0 / len(names) for n in names}


NOTHING = Perception(False, _uniform(SHAPES), _uniform(COLOURS), _uniform(PATTERNS))


def _softmax(scores: np.ndarray, names) -> dict:
  z = np.exp(scores - scores.max())
  z /= z.sum()
  return {n: float(p) for n, p in zip(names, z)}


# ------------------------------------------------------------------------------ morphology


def _padded(mask: np.ndarray, r0: int, r1: int, fill: bool) -> np.ndarray:
  """`mask` with r0 rows and r1 columns of `fill` on each side (cheaper than np.pad)."""
  h, w = mask.shape
  out = np.full((h + 2 * r0, w + 2 * r1), fill)
  out[r0:r0 + h, r1:r1 + w] = mask
  return out


def _shift_or(mask: np.ndarray, r: int, op) -> np.ndarray:
  """OR (dilation) or AND (erosion) of `mask` over a (2r+1)² square; separable."""
  h, w = mask.shape
  fill = op is np.logical_and
  p = _padded(mask, r, 0, fill)
  out = op.reduce([p[d:d + h] for d in range(2 * r + 1)])
  p = _padded(out, 0, r, fill)
  return op.reduce([p[:, d:d + w] for d in range(2 * r + 1)])


def _dilate(mask: np.ndarray, r: int = 1) -> np.ndarray:
  return _shift_or(mask, r, np.logical_or)


def _erode(mask: np.ndarray, r: int = 1) -> np.ndarray:
  return _shift_or(mask, r, np.logical_and)


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
  """4-connected component labels (0: outside `mask`, 1..n), by runs per row and
  union-find: a few hundred runs per image, so plain Python is fast enough."""
  h, w = mask.shape
  edges = np.diff(_padded(mask, 0, 1, False).astype(np.int8), axis=1).ravel()
  starts = np.flatnonzero(edges == 1)  # Row-major, so starts and stops pair up in order.
  stops = np.flatnonzero(edges == -1)
  rows, a_all, b_all = starts // (w + 1), starts % (w + 1), stops % (w + 1)
  rows_l, a_l, b_l = rows.tolist(), a_all.tolist(), b_all.tolist()
  parent = list(range(len(rows_l)))

  def root(i):
    while parent[i] != i:
      parent[i] = parent[parent[i]]
      i = parent[i]
    return i

  prev, cur, row = [], [], -1
  for k, y in enumerate(rows_l):
    if y != row:
      prev, cur, row = (cur if y == row + 1 else []), [], y
    a, b = a_l[k], b_l[k]
    for j in prev:
      if a_l[j] < b and a < b_l[j]:  # Overlapping columns: connected.
        rj, rk = root(j), root(k)
        if rj != rk:
          parent[rk] = rj
    cur.append(k)
  roots = np.array([root(k) for k in range(len(parent))], np.int64)
  uniq, run_label = np.unique(roots, return_inverse=True)
  labels = np.zeros(h * w, np.int32)
  lengths = b_all - a_all
  flat = np.repeat(rows * w + a_all - np.cumsum(np.r_[0, lengths[:-1]]), lengths)
  labels[flat + np.arange(int(lengths.sum()))] = np.repeat(run_label + 1, lengths)
  return labels.reshape(h, w), len(uniq)


def _largest_component(mask: np.ndarray) -> np.ndarray:
  labels, n = _components(mask)
  if not n:
    return mask.copy()
  return labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
  """`mask` plus every region of its complement that does not touch the border."""
  labels, _ = _components(~mask)
  border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
  return ~np.isin(labels, border[border > 0])


# ------------------------------------------------------------------------------ segmentation


def _background(pixels: np.ndarray, ring: int = 3) -> np.ndarray:
  """A per-channel plane a + b·x + c·y fitted to the border, robust to what crosses it."""
  h, w, _ = pixels.shape
  border = np.zeros((h, w), bool)
  border[:ring], border[-ring:], border[:, :ring], border[:, -ring:] = True, True, True, True
  ys, xs = np.nonzero(border)
  a = np.stack([np.ones(len(xs), np.float32), xs / w, ys / h], -1)
  b = pixels[border]
  keep = np.ones(len(a), bool)
  for _ in range(4):
    coef, *_ = np.linalg.lstsq(a[keep], b[keep], rcond=None)
    resid = np.linalg.norm(b - a @ coef, axis=-1)
    keep = resid < max(20.0, 2.5 * float(np.median(resid)))
    if keep.sum() < 10:
      break
  x = (np.arange(w, dtype=np.float32) / w)[None, :, None]
  y = (np.arange(h, dtype=np.float32) / h)[:, None, None]
  return coef[0] + x * coef[1] + y * coef[2]


def _cross(mask: np.ndarray, op) -> np.ndarray:
  """Erosion (AND) or dilation (OR) with the 4-neighbour cross."""
  p = _padded(mask, 1, 1, op is np.logical_and)
  return op.reduce([mask, p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]])


def segment(pixels: np.ndarray) -> np.ndarray:
  """The object's silhouette (bool HxW): far from the background, with secondary-colour
  stripes that blend into a pale background put back, thin clutter removed, holes filled."""
  dist = np.linalg.norm(pixels - _background(pixels), axis=-1)
  fg = dist > _FG_DISTANCE
  # Near-white pixels between object pixels (a white pattern on a pale background), when
  # nearer to white than to the background there.
  whiter = np.linalg.norm(pixels - _WHITE, axis=-1) < np.minimum(dist, 40.0)
  fg |= whiter & _erode(_dilate(fg, 4), 4)
  fg = _cross(_cross(fg, np.logical_and), np.logical_or)  # Opening: strokes are 1–2 px.
  if fg.sum() < _MIN_AREA * fg.size:
    return np.zeros(fg.shape, bool)
  return _fill_holes(_largest_component(fg))


# ------------------------------------------------------------------------------ colour


def _colour_distances(rgb: np.ndarray) -> np.ndarray:
  """Distance of colour(s) `rgb` (...x3) to each named colour, free in brightness (±15 %)."""
  scale = np.clip((rgb @ _RGB.T) / (_RGB * _RGB).sum(-1), 0.85, 1.15)  # ... x C
  return np.linalg.norm(rgb[..., None, :] - scale[..., None] * _RGB, axis=-1)


def _split_colours(pixels: np.ndarray, mask: np.ndarray):
  """→ (primary rgb, secondary rgb or None, secondary mask over the image)."""
  inner = _erode(mask, 1)
  inner = inner if inner.sum() >= 10 else mask
  values = pixels[inner]
  d_named = _colour_distances(values).min(-1)
  d_white = np.linalg.norm(values - _WHITE, axis=-1)
  d_black = np.linalg.norm(values - _BLACK, axis=-1)
  is_white = d_white < d_named
  is_black = d_black < d_named
  primary_px = values[~(is_white | is_black)]
  if len(primary_px) < 10:  # All secondary-looking: the object is the secondary colour.
    primary_px = values
  primary = np.median(primary_px, axis=0)
  secondary = None
  if max(is_white.sum(), is_black.sum()) >= 3:
    secondary = _WHITE if is_white.sum() >= is_black.sum() else _BLACK
  second = np.zeros(mask.shape, bool)
  if secondary is not None:
    axis = secondary - primary
    # Fine patterns blend the secondary into the primary (JPEG halves colour resolution):
    # the pixels farthest from the secondary show the primary least mixed.
    t = (primary_px - primary) @ axis
    if len(t) >= 40:
      primary = np.median(primary_px[t <= np.quantile(t, 0.3)], axis=0)
      axis = secondary - primary
    t = ((pixels - primary) @ axis) / float(axis @ axis)
    second = mask & (t > 0.5)
  return primary, secondary, second


def colour_probs(primary: np.ndarray) -> dict:
  d = _colour_distances(primary[None])[0]
  return _softmax(-0.5 * (d / _COLOUR_SIGMA) ** 2, COLOURS)


# ------------------------------------------------------------------------------ pattern


def _structure(second: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
  """(coherence of the secondary's edge orientations, dominant period in pixels)."""
  ys, xs = np.nonzero(mask)
  y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
  s = second[y0:y1, x0:x1].astype(np.float32)
  m = mask[y0:y1, x0:x1]
  s = np.where(m, s - s[m].mean(), 0.0)
  gy, gx = np.gradient(s)
  inside = _erode(m, 1)
  jxx, jyy, jxy = ((gx * gx)[inside].sum(), (gy * gy)[inside].sum(),
                   (gx * gy)[inside].sum())
  trace = jxx + jyy
  coherence = (math.sqrt((jxx - jyy) ** 2 + 4 * jxy * jxy) / trace) if trace > 0 else 0.0
  n = 128
  power = np.abs(np.fft.rfft2(s, (n, n))) ** 2
  fy = np.fft.fftfreq(n)[:, None]
  fx = np.fft.rfftfreq(n)[None, :]
  radius = np.sqrt(fx * fx + fy * fy)
  power[(radius < 1.0 / 20.0) | (radius > 1.0 / 3.0)] = 0.0  # Periods of 3–20 px.
  peak = np.unravel_index(int(np.argmax(power)), power.shape)
  period = 1.0 / max(float(radius[peak]), 1e-6)
  return float(coherence), period


def pattern_probs(fraction: float, coherence: float, period: float,
                  area: float = _REF_AREA) -> dict:
  """Scores each pattern by how well the secondary colour's amount, directionality and
  period fit it (Gaussian log-penalties, then normalised). A larger object measures all
  three more precisely, so its spreads shrink as 1/sqrt(area)."""
  k = min(1.5, max(0.4, math.sqrt(_REF_AREA / area)))

  def fit(value, mean, sd):
    return -0.5 * ((value - mean) / (sd * k)) ** 2

  def period_fit(name):
    return fit(math.log(period), math.log(_PERIOD[name]), 0.14)

  half = fit(fraction, 0.5, 0.12)       # Stripes, bands, checkers: half the body.
  fifth = fit(fraction, 0.24, 0.08)     # Spots: about a fifth (a quarter once blurred).
  one_dir = fit(coherence, 0.8, 0.2)    # Stripes and bands: edges all one way.
  two_dir = fit(coherence, 0.08, 0.2)   # Checkers and spots: edges both ways.
  scores = {
      "plain": fit(fraction, 0.0, 0.03),
      "striped": half + one_dir + period_fit("striped"),
      "banded": half + one_dir + period_fit("banded"),
      "checkered": half + two_dir + period_fit("checkered"),
      "spotted": fifth + two_dir + period_fit("spotted"),
  }
  return _softmax(np.array([scores[p] for p in PATTERNS]), PATTERNS)


# ------------------------------------------------------------------------------ shape


def _normalised(mask: np.ndarray) -> np.ndarray:
  """The silhouette resampled onto the grid: centroid at the centre, area _GRID_AREA."""
  ys, xs = np.nonzero(mask)
  cy, cx = ys.mean() + 0.5, xs.mean() + 0.5
  k = math.sqrt(len(xs) / _GRID_AREA)
  img = Image.fromarray(mask.astype(np.uint8) * 255)
  # Affine map from grid to image coordinates; bilinear sampling gives soft edges.
  data = (k, 0.0, cx - _GRID / 2 * k, 0.0, k, cy - _GRID / 2 * k)
  out = img.transform((_GRID, _GRID), Image.Transform.AFFINE, data, Image.Resampling.BILINEAR)
  return np.asarray(out, np.float32) / 255.0


@functools.lru_cache(maxsize=1)
def _templates() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """[shapes × rotations, GRID²] normalised silhouettes of the named outlines, their areas,
  and each outline's solidity."""
  hi = 4  # Rendered large, then resampled like an observed silhouette.
  rows = []
  for name in SHAPES:
    outline = np.array(si.SHAPES[name], np.float64)
    for r in range(_ROTATIONS):
      a = 2 * math.pi * r / _ROTATIONS
      rot = outline @ np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
      img = Image.new("L", (_GRID * hi, _GRID * hi), 0)
      scale = _GRID * hi / 6.0
      pts = [(float(x * scale + _GRID * hi / 2), float(y * scale + _GRID * hi / 2))
             for x, y in rot]
      ImageDraw.Draw(img).polygon(pts, fill=255)
      rows.append(_normalised(np.asarray(img) > 127))
  t = np.stack(rows)
  # On the pixel grid, solidity depends a little on the rotation: average over rotations.
  sol = np.array([np.mean([solidity(m > 0.5) for m in t[i * _ROTATIONS:(i + 1) * _ROTATIONS]])
                  for i in range(len(SHAPES))])
  t = t.reshape(len(SHAPES) * _ROTATIONS, -1)
  return t, t.sum(-1), sol


def _turn(o, a, b) -> float:
  return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def solidity(mask: np.ndarray) -> float:
  """Area over convex-hull area: 1 for convex outlines, lower for notches, petals, tails."""
  rows = np.flatnonzero(mask.any(1))
  if not len(rows):
    return 0.0
  sub = mask[rows]
  left = sub.argmax(1)
  right = sub.shape[1] - sub[:, ::-1].argmax(1)
  # The hull of each row's end pixels (their corners) is the hull of all pixels.
  pts = sorted({(float(x), float(y + dy)) for y, a, b in zip(rows, left, right)
                for x in (a, b) for dy in (0, 1)})
  hull = []
  for seq in (pts, pts[::-1]):  # Andrew's monotone chain: lower then upper hull.
    start = len(hull)
    for q in seq:
      while len(hull) >= start + 2 and _turn(hull[-2], hull[-1], q) <= 0:
        hull.pop()
      hull.append(q)
    hull.pop()
  area = 0.5 * abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in
                       zip(hull, hull[1:] + hull[:1])))
  return float(mask.sum()) / area if area else 0.0


def shape_probs(mask: np.ndarray) -> tuple[dict, np.ndarray]:
  """Best IoU with each named outline over all rotations, and how close the silhouette's
  solidity is to the outline's → softmax; also the IoUs."""
  grid = _normalised(mask)
  obs = grid.reshape(-1)
  t, t_area, t_solidity = _templates()
  inter = t @ obs
  iou = inter / (t_area + obs.sum() - inter)
  best = iou.reshape(len(SHAPES), _ROTATIONS).max(-1)
  sol = solidity(grid > 0.5)
  temperature = _SHAPE_TEMPERATURE * math.sqrt(_REF_AREA / mask.sum())
  scores = best / temperature - 0.5 * ((sol - t_solidity) / _SOLIDITY_SIGMA) ** 2
  return _softmax(scores, SHAPES), best


# ------------------------------------------------------------------------------ perception


def decode(image: bytes) -> np.ndarray | None:
  """RGB float32 pixels, or None when the bytes are not an image."""
  try:
    with Image.open(io.BytesIO(image)) as img:
      return np.asarray(img.convert("RGB"), np.float32)
  except Exception:  # Any undecodable input means: nothing to see.
    return None


def perceive_pixels(pixels: np.ndarray) -> Perception:
  if pixels.ndim != 3 or min(pixels.shape[:2]) < 16:
    return NOTHING
  mask = segment(pixels)
  if mask.sum() < _MIN_AREA * mask.size:
    return NOTHING
  primary, secondary, second = _split_colours(pixels, mask)
  fraction = float(second[mask].mean()) if secondary is not None else 0.0
  coherence, period = _structure(second, mask) if fraction > 0.02 else (0.0, 0.0)
  shapes, ious = shape_probs(mask)
  pattern = (pattern_probs(fraction, coherence, period, float(mask.sum())) if period else
             {p: 0.98 if p == "plain" else 0.005 for p in PATTERNS})
  features = {"area": int(mask.sum()), "primary_rgb": [round(float(v), 1) for v in primary],
              "secondary": None if secondary is None else
              ("white" if secondary is _WHITE else "black"),
              "secondary_fraction": round(fraction, 3), "coherence": round(coherence, 3),
              "period_px": round(period, 2), "best_iou": round(float(ious.max()), 3)}
  return Perception(True, shapes, colour_probs(primary), pattern, features)


@functools.lru_cache(maxsize=4096)
def perceive(image: bytes) -> Perception:
  """The look of the (single) object in an encoded image; NOTHING when none is found."""
  pixels = decode(image)
  return NOTHING if pixels is None else perceive_pixels(pixels)
