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


@pytest.mark.slow
def test_cli_dask_runner_starts_and_stops_its_own_cluster(world, local, tmp_path, capsys):
  """`curate --runner dask` without an address: a LocalCluster for the run, then closed."""
  from rew_jax import __main__ as cli  # pylint: disable=g-import-not-at-top
  work = link_inputs(world, tmp_path / "w")
  config_path = tmp_path / "curate_cli.py"
  config_path.write_text(
      f"import sys; sys.path.insert(0, {HERE!r})\n"
      "from curationcase import curate_config\n"
      "from rew_jax.curation import beam_options\n"
      "def get_config(arg=None):\n"
      "  c = curate_config()\n"
      "  c.beam = beam_options.default_config()\n"
      "  return c\n")
  assert cli.main(["curate", "--config", str(config_path), "--workdir", work, "--quiet",
                   "--runner", "dask", "--config.beam.num_workers=1"]) == 0
  out = capsys.readouterr().out
  assert "--dask_client_address=tcp://127.0.0.1:" in out and "records:" in out
  assert encoded(work) == encoded(local[0])
  assert manifest(work) == manifest(local[0])
