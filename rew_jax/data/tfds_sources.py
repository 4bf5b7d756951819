"""TFDS image-classification sets for zero-shot and kNN evaluation, read without TensorFlow.

`tfds.data_source` gives random access to prepared ArrayRecord files and decodes images with
numpy/PIL, so no TensorFlow is imported. Preparing a set (`tfds build NAME --data_dir DIR
--file_format=array_record`) is a separate, one-off step that does need TensorFlow and the
network; at evaluation time we never download (download=False).

The paper's zero-shot sets are Flowers, Sun397, Food, Aircraft and Sports100; TFDS has the
first three (Aircraft and Sports100 are not TFDS datasets). The retrieval (RECO) table adds
Cars, CUB, ImageNet, Places and Dogs, all in TFDS (ImageNet needs its manual download).

    source = open_source("flowers", data_dir=DIR)      # len, [i] → {"image", "label"}
    names = class_names("flowers")                     # ["pink primrose", ...]
    batches, n = pipeline.eval_input(source, "decode|resize_crop(224)|normalize('clip')",
                                     batch_size=64)   # rew_jax.data.pipeline's eval input

A source is a random-access Grain source (`len`, `[i]`, `where(i)`), so the evaluators read
it through the one evaluation input, `rew_jax.data.pipeline.eval_input`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from rew_jax.errors import UnknownNameError, UserError


@dataclasses.dataclass(frozen=True)
class TfdsSet:
  tfds_name: str
  split: str  # The evaluation split; kNN memories use "train".
  image_key: str = "image"
  label_key: str = "label"
  manual: bool = False  # Needs files downloaded by hand (see the TFDS catalog page).


SETS = {
    # Zero-shot table of the paper.
    "flowers": TfdsSet("oxford_flowers102", "test"),
    "food": TfdsSet("food101", "validation"),
    "sun397": TfdsSet("sun397", "test"),
    # Retrieval-augmented (RECO) table.
    "cars": TfdsSet("cars196", "test"),
    "cub": TfdsSet("caltech_birds2011", "test"),
    "imagenet": TfdsSet("imagenet2012", "validation", manual=True),
    "places": TfdsSet("places365_small", "validation"),
    "dogs": TfdsSet("stanford_dogs", "test"),
}
NOT_IN_TFDS = {"aircraft": "FGVC-Aircraft", "sports100": "Sports100"}


class DatasetUnavailableError(UserError):
  """A set that is not prepared under the data directory, or not a TFDS dataset at all."""


def resolve(name: str) -> TfdsSet:
  """A short name ("flowers") or a TFDS name ("oxford_flowers102") → its TfdsSet."""
  if name in SETS:
    return SETS[name]
  for spec in SETS.values():
    if spec.tfds_name == name:
      return spec
  if name in NOT_IN_TFDS:
    raise DatasetUnavailableError(
        f"{name!r} ({NOT_IN_TFDS[name]}) is not a TFDS dataset; evaluate it from an image "
        "folder or a REW records directory instead")
  raise UnknownNameError(f"unknown evaluation set {name!r}; known: {', '.join(sorted(SETS))} "
                         f"(or their TFDS names: {', '.join(s.tfds_name for s in SETS.values())})")


def clean_class_name(name: str) -> str:
  """A class label as words, the one rule for every set: underscores become spaces, and a
  SUN397 path drops its letter folder and keeps the hierarchy's order
  ("/a/apartment_building/outdoor" → "apartment building outdoor", "apple_pie" → "apple
  pie"). Only a leading "/" marks a path: FGVC-Aircraft's "F-16A/B" stays as it is."""
  name = name.strip()
  if name.startswith("/"):
    parts = [p for p in name.split("/") if p]
    if len(parts) > 1 and len(parts[0]) == 1:  # SUN397's leading letter folder.
      parts = parts[1:]
    name = " ".join(parts)
  return " ".join(name.replace("_", " ").split())


def class_names(name: str, data_dir: str | None = None) -> list[str]:
  """The set's class names (cleaned), from the TFDS builder's metadata (no download)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  spec = resolve(name)
  builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
  return [clean_class_name(n) for n in builder.info.features[spec.label_key].names]


class ClassificationSource:
  """Random access to (image, label) examples of one split; picklable for Grain workers."""

  def __init__(self, name: str, split: str | None = None, data_dir: str | None = None):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    self.spec = resolve(name)
    self.name = self.spec.tfds_name
    self.split = split or self.spec.split
    try:
      self._source = tfds.data_source(self.name, split=self.split, data_dir=data_dir,
                                      download=False)
    except Exception as e:  # TFDS raises assertion, not-found and format errors alike.
      hint = (" (ImageNet needs its manual download first)" if self.spec.manual else "")
      raise DatasetUnavailableError(
          f"TFDS dataset {self.name} split {self.split!r} is not prepared under "
          f"{data_dir or '~/tensorflow_datasets'}{hint}: prepare it once with `tfds build "
          f"{self.name} --data_dir DIR --file_format=array_record` ({type(e).__name__}: "
          f"{str(e)[:200]})") from None

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    ex = self._source[index]
    return {"image": ex[self.spec.image_key], "label": np.int32(ex[self.spec.label_key])}

  def where(self, index: int) -> str:
    return f"{self.name}/{self.split} example {index}"


def open_source(name: str, split: str | None = None,
                data_dir: str | None = None) -> ClassificationSource:
  return ClassificationSource(name, split, data_dir)
