"""Near-duplicates of evaluation images, removed from the web data before curation.

    index = dedup.EvalIndex.from_config(config.curation.dedup)   # None when nothing is set
    match = index.match(image_bytes)                              # None, or the nearest eval image
    if match: ...   # the item is left out of the records and counted in the report

The paper's web data is deduplicated against the evaluation sets, so that no evaluation
image (or a resized, re-encoded copy of it) is trained on. Each evaluation image gets a
perceptual hash (`imagehash.phash`: the signs of the `hash_size`² lowest frequencies of the
DCT of a greyscale copy 4·hash_size pixels wide, against their median), which survives
resizing, JPEG re-encoding and small colour changes; a web image whose hash is within
`max_distance` bits (Hamming) of an evaluation image's is a near-duplicate.

The defaults, 256 bits and 24, are measured on the embedded world (docs/curation.md): a
resized (×0.5–1.5) and re-encoded (JPEG quality 50–95) copy of an evaluation image lies
within 24 bits in 299 of 300 cases (all within 32), and none of 3,000 unrelated web images
comes closer than 40. The common 64-bit hash separates them worse there (copies within 4
bits for 98.7 %, but 17 unrelated web images with a similar silhouette within 4 as well).

Evaluation images come from `image_dirs` (every image file under them: e.g. a zero-shot
set's images) and from `references`, OVEN-style jsonl files whose lines' `image_id`s are
looked up under `reference_image_dir` in the OVEN layout (`rew_jax.data.oven_files`).
The lookup compares a web image with every evaluation hash (a vectorised XOR + popcount
over 32 bytes each); for OVEN's hundreds of thousands of evaluation images at web scale one
would index the hashes (multi-index hashing) instead.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Iterable, Sequence

import numpy as np

from rew_jax import config as config_lib
from rew_jax.data import oven_files
from rew_jax.errors import ConfigError, UserError

def default_config() -> config_lib.ConfigDict:
  """`curation.dedup`: empty `image_dirs` and `references` switch deduplication off."""
  return config_lib.ConfigDict(dict(
      image_dirs=(),            # Folders of evaluation images (searched recursively).
      references=(),            # OVEN-style jsonl files; their image_ids are evaluation images.
      reference_image_dir="",   # Where the references' images are (OVEN layout).
      hash_size=16,             # The hash has hash_size² bits.
      max_distance=24,          # Hamming distance (in bits) that still counts as a copy.
  ))


OVEN_EVAL_FILES = tuple(f"oven_{split}_{part}.jsonl" for part in ("val", "test")
                        for split in ("entity", "query"))


def oven_eval(oven_dir: str) -> dict:
  """`curation.dedup` values that cover OVEN's validation and test images in `oven_dir`
  (its jsonl files, and its images/ folder in the OVEN layout)."""
  return dict(references=tuple(os.path.join(oven_dir, f) for f in OVEN_EVAL_FILES),
              reference_image_dir=os.path.join(oven_dir, "images"))


def enabled(config) -> bool:
  return bool(config and (config.get("image_dirs") or config.get("references")))


def phash(data: bytes, hash_size: int = 16, where: str = "image") -> np.ndarray:
  """The perceptual hash of encoded image bytes: hash_size² bits, packed (uint8)."""
  import imagehash  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(io.BytesIO(data)) as img:
      bits = imagehash.phash(img.convert("RGB"), hash_size=hash_size).hash.reshape(-1)
  except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError...).
    raise UserError(f"{where}: cannot decode image for deduplication "
                    f"({type(e).__name__}: {e})") from None
  return np.packbits(bits.astype(np.uint8))


@dataclasses.dataclass(frozen=True)
class Match:
  """The evaluation image nearest to a web image, within the threshold."""
  eval_image: str  # Its path.
  distance: int    # Hamming distance of the two hashes, in bits.


def _image_files(directory: str) -> list[str]:
  if not os.path.isdir(directory):
    raise ConfigError(f"curation.dedup.image_dirs: {directory!r} is not a directory")
  found = []
  for root, _, files in os.walk(directory):
    found += [os.path.join(root, f) for f in files
              if os.path.splitext(f)[1] in oven_files.IMAGE_EXTENSIONS]
  return sorted(found)


def _reference_images(path: str, image_dir: str) -> list[str]:
  if not image_dir:
    raise ConfigError("curation.dedup.references needs curation.dedup.reference_image_dir")
  if not os.path.isfile(path):
    raise ConfigError(f"curation.dedup.references: {path!r} does not exist")
  images = {}
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        image_id = json.loads(line)["image_id"]
      except (ValueError, KeyError, TypeError):
        raise UserError(f"{path}:{n}: not a JSON object with an image_id") from None
      images.setdefault(image_id, None)
  return [oven_files.image_path(image_dir, i) for i in images]


class EvalIndex:
  """The perceptual hashes of the evaluation images, and the lookup of a web image."""

  def __init__(self, paths: Sequence[str], hashes: np.ndarray, *, hash_size: int,
               max_distance: int):
    if hash_size < 2 or hash_size % 2:
      raise ConfigError("curation.dedup.hash_size must be an even number >= 2")
    if not 0 <= max_distance < hash_size ** 2:
      raise ConfigError(f"curation.dedup.max_distance must be in [0, {hash_size ** 2})")
    self.paths = list(paths)
    self.hashes = np.asarray(hashes, np.uint8).reshape(len(self.paths), hash_size ** 2 // 8)
    self.hash_size, self.max_distance = int(hash_size), int(max_distance)

  @classmethod
  def from_files(cls, paths: Iterable[str], *, hash_size: int = 16,
                 max_distance: int = 24) -> "EvalIndex":
    paths = list(dict.fromkeys(paths))  # The same image listed twice is hashed once.
    hashes = []
    for path in paths:
      with open(path, "rb") as f:
        hashes.append(phash(f.read(), hash_size, path))
    return cls(paths, np.array(hashes, np.uint8), hash_size=hash_size,
               max_distance=max_distance)

  @classmethod
  def from_config(cls, config) -> "EvalIndex | None":
    """The index of `curation.dedup`; None when it names no evaluation images."""
    if not enabled(config):
      return None
    paths = []
    for d in config.get("image_dirs") or ():
      paths += _image_files(d)
    for r in config.get("references") or ():
      paths += _reference_images(r, config.get("reference_image_dir", ""))
    if not paths:
      raise ConfigError("curation.dedup: the configured image_dirs and references hold no "
                        "images")
    return cls.from_files(paths, hash_size=int(config.get("hash_size", 16)),
                          max_distance=int(config.get("max_distance", 24)))

  def __len__(self) -> int:
    return len(self.paths)

  def nearest(self, data: bytes, where: str = "image") -> Match:
    """The evaluation image whose hash is nearest to the image's, at whatever distance."""
    distances = np.bitwise_count(self.hashes ^ phash(data, self.hash_size, where)).sum(1)
    i = int(np.argmin(distances))
    return Match(self.paths[i], int(distances[i]))

  def match(self, data: bytes, where: str = "image") -> Match | None:
    """The nearest evaluation image when it is within `max_distance` bits, else None."""
    nearest = self.nearest(data, where)
    return nearest if nearest.distance <= self.max_distance else None
