"""A tiny embedded world with BM25 candidates in 3 shards, built once per test process."""

import pytest

from curationcase import build_world


@pytest.fixture(scope="session")
def world(tmp_path_factory):
  """A workdir W holding W/world, W/kb and W/candidates (read-only for tests)."""
  return build_world(str(tmp_path_factory.mktemp("curation_world")))
