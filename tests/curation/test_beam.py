"""The Beam pipeline (DirectRunner) writes the same records as the local runner."""

import json
import os

import pytest

from rew_jax import records
from rew_jax.curation import run

from curationcase import curate_config, link_inputs

beam = pytest.importorskip("apache_beam", reason="apache-beam (the beam extra) is not "
                           "installed: pip install 'rew_jax[beam]'")


def test_beam_equals_local_runner(world, tmp_path):
  from rew_jax.curation import beam as beam_curation
  local = link_inputs(world, tmp_path / "local")
  run.curate(curate_config(), local, verbose=False)
  on_beam = link_inputs(world, tmp_path / "beam")
  report = beam_curation.curate(curate_config(), on_beam)
  a = os.path.join(local, "records")
  b = os.path.join(on_beam, "records")
  assert [records.encode(r) for r in records.read_records(a)] == [
      records.encode(r) for r in records.read_records(b, check_hashes=True)]
  ma, mb = (json.load(open(os.path.join(d, "manifest.json"))) for d in (a, b))
  assert ma == mb  # Same counts, same shard bytes (sha256), same config hash.
  assert report["accuracy_vs_truth"]["records_pct"] > 0
  # A second run finds every shard committed and runs no pipeline.
  again = beam_curation.curate(curate_config(), on_beam)
  assert again["counts_by_status"] == report["counts_by_status"]
