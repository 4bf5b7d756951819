"""Web images that copy evaluation images (exactly, or resized and re-encoded) are removed
before curation and counted in the report; unrelated images are kept."""

import io
import json
import os

import pytest
from PIL import Image

from rew_jax import records
from rew_jax.curation import dedup, inputs, run, section
from rew_jax.data import oven_files
from rew_jax.errors import ConfigError

from curationcase import curate_config, link_inputs


def _resized_reencoded(data: bytes, scale: float = 0.75, quality: int = 70) -> bytes:
  img = Image.open(io.BytesIO(data)).convert("RGB")
  out = io.BytesIO()
  img.resize((int(img.width * scale), int(img.height * scale)), Image.BILINEAR).save(
      out, "JPEG", quality=quality)
  return out.getvalue()


def _rows(world):
  shard = inputs.candidate_shards(os.path.join(world, "candidates"))[0]
  return [json.loads(line) for line in open(shard, encoding="utf-8")]


def _image(world, row) -> bytes:
  return open(os.path.join(world, "world", row["image_path"]), "rb").read()


def test_exact_and_perturbed_copies_match_unrelated_images_do_not(world, tmp_path):
  rows = _rows(world)
  evals = tmp_path / "eval"
  (evals / "sub").mkdir(parents=True)
  (evals / "a.jpg").write_bytes(_image(world, rows[0]))
  (evals / "sub" / "b.jpg").write_bytes(_image(world, rows[1]))  # Searched recursively.
  (evals / "notes.txt").write_text("not an image")
  index = dedup.EvalIndex.from_config(dict(image_dirs=[str(evals)]))
  assert len(index) == 2 and (index.hash_size, index.max_distance) == (16, 24)
  exact = index.match(_image(world, rows[0]))
  assert exact == dedup.Match(str(evals / "a.jpg"), 0)
  perturbed = _resized_reencoded(_image(world, rows[1]))
  assert perturbed != _image(world, rows[1])
  match = index.match(perturbed)
  assert match is not None and match.eval_image == str(evals / "sub" / "b.jpg")
  assert 0 < match.distance <= 24
  # The other web images of the shard are other pictures: all further than the threshold.
  distances = [index.nearest(_image(world, r)).distance for r in rows[2:]]
  assert min(distances) > 24, distances
  assert all(index.match(_image(world, r)) is None for r in rows[2:])
  with pytest.raises(ConfigError, match="max_distance"):
    dedup.EvalIndex.from_config(dict(image_dirs=[str(evals)], hash_size=8, max_distance=64))


def test_oven_references_name_the_evaluation_images(world, tmp_path):
  rows = _rows(world)
  image_id = "oven_01234567"
  path = tmp_path / "images" / "01" / f"{image_id}.jpg"  # OVEN's layout.
  path.parent.mkdir(parents=True)
  path.write_bytes(_image(world, rows[3]))
  ref = tmp_path / "oven_entity_val.jsonl"
  ref.write_text(json.dumps({"data_id": "d0", "image_id": image_id}) + "\n\n" +
                 json.dumps({"data_id": "d1", "image_id": image_id}) + "\n")
  index = dedup.EvalIndex.from_config(dict(
      references=[str(ref)], reference_image_dir=str(tmp_path / "images")))
  assert index.paths == [oven_files.image_path(str(tmp_path / "images"), image_id)]
  assert index.paths == [str(path)]  # Listed twice, hashed once.
  assert index.match(_image(world, rows[3])).distance == 0
  ref.write_text('{"data_id": "d2"}\n')
  with pytest.raises(Exception, match="oven_entity_val.jsonl:1: not a JSON object with an "
                                      "image_id"):
    dedup.EvalIndex.from_config(dict(references=[str(ref)],
                                     reference_image_dir=str(tmp_path / "images")))
  with pytest.raises(ConfigError, match="reference_image_dir"):
    dedup.EvalIndex.from_config(dict(references=[str(ref)]))
  with pytest.raises(ConfigError, match="not a directory"):
    dedup.EvalIndex.from_config(dict(image_dirs=[str(tmp_path / "missing")]))
  assert dedup.EvalIndex.from_config(dedup.default_config()) is None


def test_curation_removes_and_counts_the_copies(world, tmp_path):
  rows = _rows(world)
  evals = tmp_path / "eval"
  evals.mkdir()
  (evals / "exact.jpg").write_bytes(_image(world, rows[0]))
  (evals / "smaller.jpg").write_bytes(_resized_reencoded(_image(world, rows[1]), 0.6, 60))
  work = link_inputs(world, tmp_path / "w")
  config = curate_config(backend="top1_candidate")
  plain_hash = section.curation_hash(config)
  config.curation.dedup.image_dirs = (str(evals),)
  assert section.curation_hash(config) != plain_hash  # The records depend on it.

  report = run.curate(config, work, verbose=False)
  removed = {rows[0]["image_id"], rows[1]["image_id"]}
  ids = [r.image_id for r in records.read_records(os.path.join(work, "records"))]
  assert not removed & set(ids)
  total = sum(len(_rows_of(s)) for s in inputs.candidate_shards(
      os.path.join(world, "candidates")))
  assert len(ids) == report["records"] == total - 2
  dup = report["eval_duplicates"]
  assert (dup["removed"], dup["eval_images"]) == (2, 2)
  assert {e.split(":")[0] for e in dup["examples"]} == removed
  assert report["skipped_inputs"] == 0  # Counted apart from undecodable inputs.
  md = open(os.path.join(work, "curation", "report.md"), encoding="utf-8").read()
  assert ("near-duplicates of evaluation images removed before curation: 2 (compared "
          "with 2 evaluation images)") in md
  # A rerun reads the outcomes from the journal: the same records and counts.
  again = run.curate(config, work, verbose=False)
  assert again["records"] == total - 2 and again["eval_duplicates"]["removed"] == 2


def _rows_of(shard):
  return open(shard, encoding="utf-8").read().splitlines()


def test_no_dedup_keeps_older_curation_hashes():
  config = curate_config()
  without = config.curation.to_dict()
  # Keys added later with a default that changes nothing: older workdirs keep their hash.
  for key in ("dedup", "context", "mode_of_calls", "batch_price_per_mtok_in",
              "batch_price_per_mtok_out", "batch_completion_window", "batch_max_requests",
              "batch_max_bytes", "batch_poll_initial_s", "batch_poll_max_s"):
    without.pop(key)
  assert section.curation_hash(config) == records.config_hash(
      {k: v for k, v in without.items() if k not in (
          "concurrency", "rate_limit_per_s", "report_examples", "timeout_s", "max_attempts",
          "backoff_initial_s", "backoff_max_s")})


def test_the_beam_runner_removes_the_same_copies_as_the_local_runner(world, tmp_path):
  """The Beam pipeline (DirectRunner) with the same dedup config: identical records and
  manifest, the same copies counted."""
  pytest.importorskip("apache_beam")
  from rew_jax.curation import beam as beam_curation  # pylint: disable=import-outside-toplevel
  rows = _rows(world)
  evals = tmp_path / "eval"
  evals.mkdir()
  (evals / "copy.jpg").write_bytes(_resized_reencoded(_image(world, rows[2]), 0.8, 70))
  config = curate_config(backend="top1_candidate")
  config.curation.dedup.image_dirs = (str(evals),)
  out = {}
  for runner in ("local", "direct"):
    work = link_inputs(world, tmp_path / runner)
    report = (run.curate(config, work, verbose=False) if runner == "local" else
              beam_curation.curate(config, work, runner="direct", log=lambda _: None))
    recs = [records.encode(r) for r in records.read_records(os.path.join(work, "records"))]
    with open(os.path.join(work, "records", "manifest.json"), encoding="utf-8") as f:
      out[runner] = (recs, json.load(f), report["eval_duplicates"]["removed"],
                     report["eval_duplicates"]["eval_images"])
  assert out["direct"] == out["local"]
  assert out["local"][2:] == (1, 1)
  assert rows[2]["image_id"] not in {
      records.decode(r).image_id for r in out["local"][0]}
