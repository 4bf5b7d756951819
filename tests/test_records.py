"""REW records: round trip, determinism, manifest checks and bad-input errors."""

import io
import json
import os
import pickle

import msgpack
import pytest
from PIL import Image

from rew_jax import records
from rew_jax.__main__ import main as cli_main
from rew_jax.records import QA, Candidate, RecordError, RewRecord


def jpeg(color=(200, 30, 30), size=(8, 6)) -> bytes:
  buf = io.BytesIO()
  Image.new("RGB", size, color).save(buf, format="JPEG")
  return buf.getvalue()


def make_record(i: int, status: str = "kept", **kw) -> RewRecord:
  fields = dict(
      image_id=f"web_{i:05d}", image=jpeg((i % 255, 10, 20)), caption=f"caption {i} — café ☕",
      candidates=[{"entity_id": f"Q{i}", "name": f"Entity {i}", "score": 0.5 + i / 1000},
                  Candidate(f"Q{i + 1}", "Другой", 0.25)],
      entity_id=f"Q{i}", entity_name=f"Entity {i}", curation_status=status, backend="simulated",
      rationale=f"because {i}", qa=[{"question": "what colour?", "answer": "red"}])
  fields.update(kw)
  return RewRecord(**fields)


def test_round_trip_unicode_and_empty_fields():
  full = make_record(3, caption="東京タワー at night 🌃", rationale="", qa=())
  assert records.decode(records.encode(full)) == full
  minimal = RewRecord(image_id="x", image=b"\xff\xd8")
  back = records.decode(records.encode(minimal))
  assert back == minimal and back.rationale == "" and back.qa == () and back.candidates == ()
  assert back.curation_status == "candidate"
  assert isinstance(full.candidates[0], Candidate) and isinstance(full.qa, tuple)
  assert make_record(1).qa == (QA("what colour?", "red"),)


def test_encoding_is_deterministic_and_versioned():
  a, b = make_record(7), make_record(7)
  assert records.encode(a) == records.encode(b)
  payload = msgpack.unpackb(records.encode(a))
  assert list(payload)[:2] == ["schema_version", "image_id"]
  assert payload["schema_version"] == records.SCHEMA_VERSION
  assert isinstance(payload["image"], bytes)
  # An int score is stored as a float: same value, same bytes.
  c1 = make_record(1, candidates=[{"entity_id": "Q1", "name": "n", "score": 1}])
  c2 = make_record(1, candidates=[{"entity_id": "Q1", "name": "n", "score": 1.0}])
  assert records.encode(c1) == records.encode(c2)


@pytest.mark.parametrize("mutate, message", [
    (lambda p: p.pop("image_id"), "missing required field 'image_id'"),
    (lambda p: p.update(caption=3), "field 'caption' is int, expected str"),
    (lambda p: p.update(image="text"), "field 'image' is str, expected bytes"),
    (lambda p: p.update(schema_version=99), "unknown schema_version 99"),
    (lambda p: p.pop("schema_version"), "unknown schema_version None"),
    (lambda p: p.update(curation_status="maybe"), "curation_status 'maybe'"),
    (lambda p: p.update(candidates=[{"entity_id": "Q1", "name": "n"}]), "candidates[0] has keys"),
    (lambda p: p.update(candidates=[{"entity_id": "Q1", "name": "n", "score": "hi"}]),
     "candidates[0].score is str"),
    (lambda p: p.update(qa="q?"), "field 'qa' is str, expected a list"),
    (lambda p: p.update(colour="red"), "unknown fields ['colour']"),
])
def test_decode_names_the_problem(mutate, message):
  payload = msgpack.unpackb(records.encode(make_record(1)))
  mutate(payload)
  with pytest.raises(RecordError) as e:
    records.decode(msgpack.packb(payload, use_bin_type=True), where="shard s.array_record record 4")
  assert str(e.value).startswith("shard s.array_record record 4: ")
  assert message in str(e.value)


def test_decode_garbage_and_construction_errors():
  with pytest.raises(RecordError, match="record 9: not a msgpack REW record"):
    records.decode(b"\xc1\xc1", where="record 9")
  with pytest.raises(RecordError, match="expected a msgpack map"):
    records.decode(msgpack.packb([1, 2]))
  with pytest.raises(RecordError, match="'image' is empty"):
    RewRecord(image_id="a", image=b"")
  with pytest.raises(RecordError, match="curation_status"):
    RewRecord(image_id="a", image=b"x", curation_status="verified")


def test_write_read_manifest(workdir):
  recs = [make_record(i, status=s) for i, s in enumerate(["kept"] * 4 + ["corrected"] * 3 +
                                                          ["abstained"] * 2 + ["candidate"])]
  manifest = records.write_records(str(workdir), recs, records_per_shard=4, source="unit",
                                   curation_config_hash=records.config_hash({"a": 1}))
  assert [s.count for s in manifest.shards] == [4, 4, 2]
  assert sorted(os.listdir(workdir)) == ["manifest.json", "rew-00000.array_record",
                                         "rew-00001.array_record", "rew-00002.array_record"]
  loaded = records.Manifest.load(str(workdir))
  assert loaded == manifest and loaded.total == 10
  assert loaded.counts_by_status == {"abstained": 2, "candidate": 1, "corrected": 3, "kept": 4}
  on_disk = json.load(open(workdir / "manifest.json"))
  assert on_disk["schema_version"] == 1 and on_disk["source"] == "unit"
  assert len(on_disk["shards"][0]["sha256"]) == 64
  loaded.verify(str(workdir), check_hashes=True)
  assert list(records.read_records(str(workdir), check_hashes=True)) == recs
  # Same records, same shard bytes.
  other = workdir / "again"
  again = records.write_records(str(other), recs, records_per_shard=4, source="unit",
                                curation_config_hash=records.config_hash({"a": 1}))
  assert [s.sha256 for s in again.shards] == [s.sha256 for s in manifest.shards]
  rebuilt = records.describe_shards(str(workdir), [s.name for s in manifest.shards],
                                    source="unit", curation_config_hash=manifest.curation_config_hash)
  assert rebuilt == manifest


def test_random_access_source(workdir):
  recs = [make_record(i) for i in range(7)]
  records.write_records(str(workdir), recs, records_per_shard=3)
  source = records.RecordSource(str(workdir))
  assert len(source) == 7
  assert records.decode(source[5]) == recs[5]
  assert source.where(5).endswith("rew-00001.array_record record 2")
  assert records.decode(pickle.loads(pickle.dumps(source))[6]) == recs[6]


def test_failed_writer_leaves_nothing(workdir):
  with pytest.raises(RuntimeError):
    with records.ShardWriter(str(workdir), records_per_shard=2) as w:
      for i in range(3):
        w.write(make_record(i))
      raise RuntimeError("curation crashed")
  # The first full shard was committed; no manifest, no temporary files.
  assert sorted(os.listdir(workdir)) == ["rew-00000.array_record"]
  with pytest.raises(RecordError, match="no manifest.json"):
    list(records.read_records(str(workdir)))


@pytest.fixture
def shards(workdir):
  recs = [make_record(i) for i in range(6)]
  records.write_records(str(workdir), recs, records_per_shard=3)
  return workdir


def test_truncated_shard(shards):
  path = shards / "rew-00001.array_record"
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(RecordError, match=r"rew-00001.array_record: .*bytes on disk.*truncated"):
    list(records.read_records(str(shards)))
  # Even without the manifest check, the reader names the shard.
  with pytest.raises(RecordError, match=r"shard .*rew-00001.array_record.*unreadable"):
    list(records.read_records(str(shards), verify=False))


def test_manifest_mismatch(shards):
  manifest = json.load(open(shards / "manifest.json"))
  manifest["shards"][0]["count"] = 4
  manifest["total"] = 7
  json.dump(manifest, open(shards / "manifest.json", "w"))
  with pytest.raises(RecordError, match=r"rew-00000.array_record: holds 3 records, manifest says 4"):
    records.Manifest.load(str(shards)).verify(str(shards))
  manifest["shards"][0]["count"] = 3
  manifest["total"] = 6
  json.dump(manifest, open(shards / "manifest.json", "w"))
  os.remove(shards / "rew-00001.array_record")
  with pytest.raises(RecordError, match="rew-00001.array_record: listed in the manifest but missing"):
    records.Manifest.load(str(shards)).verify(str(shards), check_hashes=False)
  manifest["total"] = 100
  json.dump(manifest, open(shards / "manifest.json", "w"))
  with pytest.raises(RecordError, match="total 100 != sum of shard counts 6"):
    records.Manifest.load(str(shards))
  manifest["schema_version"] = 2
  json.dump(manifest, open(shards / "manifest.json", "w"))
  with pytest.raises(RecordError, match="unknown schema_version 2"):
    records.Manifest.load(str(shards))


def test_hash_mismatch_and_bad_record_skip(workdir):
  from array_record.python import array_record_module
  good = [records.encode(make_record(i)) for i in range(3)]
  bad = msgpack.packb({"schema_version": 1, "image_id": 5, "image": b"x"}, use_bin_type=True)
  path = str(workdir / "rew-00000.array_record")
  writer = array_record_module.ArrayRecordWriter(path, records.WRITER_OPTIONS)
  for data in (good[0], bad, good[1], good[2]):
    writer.write(data)
  writer.close()
  info = records.ShardInfo("rew-00000.array_record", 4, "0" * 64, os.path.getsize(path), {})
  records.Manifest(shards=(info,)).save(str(workdir))
  with pytest.raises(RecordError, match="sha256 differs"):
    list(records.read_records(str(workdir), check_hashes=True))
  with pytest.raises(RecordError, match=r"rew-00000.array_record record 1: field 'image_id' is int"):
    list(records.read_records(str(workdir)))
  skipped = records.SkipCounter()
  out = list(records.read_records(str(workdir), on_error="skip", skipped=skipped))
  assert [r.image_id for r in out] == ["web_00000", "web_00001", "web_00002"]
  assert skipped.total == 1 and "record 1" in skipped.summary()


def test_cli_inspect(shards, capsys):
  assert cli_main(["records", "inspect", str(shards), "--samples", "2", "--check-hashes"]) == 0
  out = capsys.readouterr().out
  assert "6 records in 2 shards" in out
  assert "kept" in out and "100.0%" in out
  assert out.count("- web_0000") == 2 and "café" in out
  assert cli_main(["records", "inspect", str(shards / "nowhere")]) == 2
  assert "no manifest.json" in capsys.readouterr().err
