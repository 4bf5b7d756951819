"""Web images that do not decode are caught at curation: counted as skipped inputs in the
report, never curated, never written as records, and still skipped (not re-read) on a rerun."""

import json
import os

from rew_jax import records
from rew_jax.curation import inputs, run

from curationcase import curate_config, link_inputs


def _truncated_copy(src: str, dst: str) -> None:
  """The JPEG cut in the middle of its entropy-coded data, as an interrupted download is."""
  data = open(src, "rb").read()
  with open(dst, "wb") as f:
    f.write(data[:len(data) // 2])


def test_a_truncated_jpeg_is_counted_and_never_reaches_the_records(world, tmp_path):
  work = link_inputs(world, tmp_path / "w")
  shard = inputs.candidate_shards(os.path.join(world, "candidates"))[0]
  rows = [json.loads(line) for line in open(shard, encoding="utf-8").readlines()[:6]]
  bad = rows[2]
  src = os.path.join(world, "world", bad["image_path"])
  assert open(src, "rb").read(2) == b"\xff\xd8"  # A JPEG.
  bad["image_path"] = str(tmp_path / "truncated.jpg")
  _truncated_copy(src, bad["image_path"])
  cand = tmp_path / "cand"
  cand.mkdir()
  (cand / "candidates-00000-of-00001.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in rows))
  config = curate_config(candidates_dir=str(cand))

  report = run.curate(config, work, verbose=False)
  ids = [r.image_id for r in records.read_records(os.path.join(work, "records"),
                                                  check_hashes=True)]
  assert ids == [r["image_id"] for r in rows if r is not bad]
  assert report["records"] == 5 and report["skipped_inputs"] == 1
  assert report["skipped_inputs_by_reason"] == {"undecodable image": 1}
  assert bad["image_id"] in report["skipped_examples"][0]
  assert "truncated" in report["skipped_examples"][0]
  assert sum(report["counts_by_status"].values()) == 5
  md = open(os.path.join(work, "curation", "report.md"), encoding="utf-8").read()
  assert "skipped inputs: 1" in md and "undecodable image" in md
  assert report["dead_letters"]["by_kind"] == {"bad_image": 1}
  letters = open(os.path.join(work, "curation", "dead_letters",
                              "candidates-00000-of-00001.jsonl"), encoding="utf-8").readlines()
  assert [json.loads(x)["image_id"] for x in letters] == [bad["image_id"]]

  # A rerun reads the outcome from the journal: same records, same count.
  again = run.curate(config, work, verbose=False)
  assert again["skipped_inputs"] == 1 and again["records"] == 5


def test_check_image_decodes_cheaply_but_catches_truncation(world, tmp_path):
  shard = inputs.candidate_shards(os.path.join(world, "candidates"))[0]
  row = json.loads(open(shard, encoding="utf-8").readline())
  data = open(os.path.join(world, "world", row["image_path"]), "rb").read()
  inputs.check_image(data, "whole")
  for cut in (len(data) // 2, 600, 3):
    try:
      inputs.check_image(data[:cut], f"cut at {cut}")
    except inputs.BadImageError as e:
      assert f"cut at {cut}: cannot decode image ({cut} bytes" in str(e)
    else:
      raise AssertionError(f"a JPEG cut at {cut} bytes passed the check")
