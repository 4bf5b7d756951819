"""TFDS evaluation sources through tfds.data_source with mock data (no download, no TF),
read by the eval input."""

import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from rew_jax.data import pipeline
from rew_jax.data import tfds_sources
from rew_jax.errors import UnknownNameError

PP = "decode|resize_crop(8)|normalize('clip')"


@pytest.fixture
def mock():
  with tfds.testing.mock_data(num_examples=7, policy=tfds.testing.MockPolicy.USE_CODE):
    yield


@pytest.mark.parametrize("name", ["flowers", "food", "sun397", "cub"])
def test_mock_sources(mock, name):
  source = tfds_sources.open_source(name)
  assert len(source) == 7
  ex = source[3]
  assert ex["image"].ndim == 3 and ex["image"].dtype == np.uint8
  assert ex["label"].dtype == np.int32 and 0 <= int(ex["label"]) < len(tfds_sources.class_names(name))
  assert source.where(3).endswith("/" + tfds_sources.SETS[name].split + " example 3")


def test_the_eval_input_reads_a_source_whole(mock):
  source = tfds_sources.open_source("flowers")
  labels = [int(source[i]["label"]) for i in range(7)]
  got, masks = [], []
  for p in range(2):
    ds, num_batches = pipeline.eval_input(source, PP, batch_size=4, process_index=p,
                                          process_count=2, num_threads=2)
    batches = list(ds)
    assert len(batches) == num_batches == 2  # ceil(ceil(7/2) / 2)
    for b in batches:
      assert b["image"].shape == (2, 8, 8, 3) and b["image"].dtype == np.float32
      got += [int(l) for l, m in zip(b["label"], b["mask"]) if m]
      masks += b["mask"].tolist()
  assert sorted(got) == sorted(labels) and masks.count(0) == 1
  assert "tensorflow" not in sys.modules  # Read and decoded without TensorFlow.


def test_class_names_and_errors(tmp_path):
  names = tfds_sources.class_names("flowers")
  assert len(names) == 102 and names[0] == "pink primrose"
  assert tfds_sources.clean_class_name("/a/apartment_building/outdoor") == "apartment building outdoor"
  assert tfds_sources.clean_class_name("apple_pie") == "apple pie"
  assert tfds_sources.resolve("oxford_flowers102") is tfds_sources.SETS["flowers"]
  with pytest.raises(tfds_sources.DatasetUnavailableError, match="FGVC-Aircraft.*not a TFDS"):
    tfds_sources.resolve("aircraft")
  with pytest.raises(UnknownNameError, match="unknown evaluation set 'flower'"):
    tfds_sources.resolve("flower")
  with pytest.raises(tfds_sources.DatasetUnavailableError, match="food101 split 'validation' is not prepared"):
    tfds_sources.open_source("food", data_dir=str(tmp_path))
