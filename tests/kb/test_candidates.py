"""Input readers and the candidates step, on tiny hand-made fixtures."""

import io
import json
import os
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rew_jax import __main__ as cli
from rew_jax.kb import candidates, sources

KB = [("Q1", "Crimson Striped Kestrel"), ("Q2", "Azure Crested Heron"),
      ("Q3", "Crimson Striped Falcon (aircraft)"), ("Q4", "Crimson Striped Falcon (bird)"),
      ("Q5", "Negative equity"), ("Q6", "Golden Spotted Turtle")]
CAPTIONS = ["my crimson striped kestrel on a fence", "an azure crested heron at the lake",
            "negative equity explained", "golden spotted turtle basking", "",
            "a crimson striped falcon (aircraft) at the airshow", "azure heron, crested"]


def make_world(root):
  """A directory in the embedded world's layout (KB, web captions, images)."""
  os.makedirs(root / "kb")
  os.makedirs(root / "web")
  with open(root / "kb" / "Wiki6M_ver_1_0.jsonl.gz", "wb") as raw:
    import gzip
    with gzip.GzipFile(fileobj=raw, mode="wb") as gz:
      for qid, title in KB:
        gz.write((json.dumps({"wikidata_id": qid, "wikipedia_title": title,
                              "wikipedia_summary": f"About {title}."}) + "\n").encode())
  with open(root / "web" / "captions.jsonl", "w") as f:
    for i, c in enumerate(CAPTIONS):
      f.write(json.dumps({"image_id": f"web_{i:08d}", "caption": c,
                          "image_path": f"images/{i:02d}/web_{i:08d}.jpg"}) + "\n")
  return str(root)


def _config(world, **retrieval):
  c = candidates.default_config()
  c.data.path = world
  c.data.records_per_shard = 3
  for k, v in retrieval.items():
    c.retrieval[k] = v
  return c


@pytest.fixture(scope="module")
def embedding_run(module_workdir):
  world = make_world(module_workdir / "world")
  work = str(module_workdir / "work")
  out = candidates.run_candidates(_config(world, k=3), work, log=lambda *_: None)
  return world, work, out


def test_embedding_run_output_contract(embedding_run):
  world, work, out = embedding_run
  names = sorted(f for f in os.listdir(out) if f.endswith(".jsonl"))
  assert names == [f"candidates-0000{i}-of-00003.jsonl" for i in range(3)]
  manifest = json.load(open(os.path.join(out, "manifest.json")))
  assert manifest["records"] == 7 and manifest["num_shards"] == 3 and manifest["k"] == 3
  assert [s["records"] for s in manifest["shards"]] == [3, 3, 1]
  recs = list(candidates.read_candidates(out))
  assert [r["image_id"] for r in recs] == [f"web_{i:08d}" for i in range(7)]
  assert recs[0]["image_path"] == os.path.join(world, "images", "00", "web_00000000.jpg")
  assert recs[0]["caption"] == CAPTIONS[0]
  for r in recs:
    assert len(r["candidates"]) == 3
    scores = [c["score"] for c in r["candidates"]]
    assert scores == sorted(scores, reverse=True)
    assert set(r["candidates"][0]) == {"entity_id", "name", "score"}
  top = [r["candidates"][0]["entity_id"] for r in recs]
  assert top[:4] == ["Q1", "Q2", "Q5", "Q6"] and top[5] == "Q3"
  # KB artifacts sit next to the index.
  for name in ("meta.json", "ald_codes.npz", "name_trie.npz", "code_trie.npz"):
    assert os.path.isfile(os.path.join(work, "kb", name))


def test_resume_rewrites_only_missing_shards(embedding_run):
  world, work, out = embedding_run
  first = os.path.join(out, "candidates-00000-of-00003.jsonl")
  last = os.path.join(out, "candidates-00002-of-00003.jsonl")
  stamp = os.path.getmtime(first)
  content = open(last).read()
  os.remove(last)
  log = []
  candidates.run_candidates(_config(world, k=3), work, log=log.append)
  assert "2 of this host's 3 already done" in log[0]
  assert os.path.getmtime(first) == stamp and open(last).read() == content


def test_bm25_method_and_cli_entry(tmp_path, capsys):
  world = make_world(tmp_path / "world")
  rc = cli.main(["candidates", "--workdir", str(tmp_path / "w"),
                 "--config.candidates.data.path", world,
                 "--config.candidates.retrieval.method=bm25", "--config.candidates.retrieval.k=2"])
  assert rc == 0
  recs = list(candidates.read_candidates(str(tmp_path / "w" / "candidates")))
  assert recs[0]["candidates"][0]["entity_id"] == "Q1"
  assert recs[4]["candidates"] == []  # Empty caption: nothing lexical to match.
  assert cli.main(["candidates", "--workdir", str(tmp_path / "w"),
                   "--config.candidates.retrieval.methd=bm25"]) == 2
  assert "unknown config key 'candidates.retrieval.methd'" in capsys.readouterr().err


def test_bad_caption_record_named_or_skipped(tmp_path):
  world = make_world(tmp_path / "world")
  with open(os.path.join(world, "web", "captions.jsonl"), "a") as f:
    f.write('{"image_id": "x", "image_path": "a.jpg"}\n{broken\n')
  config = _config(world, method="bm25")
  with pytest.raises(sources.DataFormatError, match=r"captions\.jsonl:8: missing or non-text"):
    candidates.run_candidates(config, str(tmp_path / "w"), log=lambda *_: None)
  config.data.skip_bad_records = True
  out = candidates.run_candidates(config, str(tmp_path / "w2"), log=lambda *_: None)
  manifest = json.load(open(os.path.join(out, "manifest.json")))
  assert manifest["records"] == 7 and manifest["skipped"] == 2


def _jpeg(i):
  return bytes([0xFF, 0xD8, i, 0xFF, 0xD9])


def test_webdataset_reader_and_references(tmp_path):
  shard = tmp_path / "00000.tar"
  with tarfile.open(shard, "w") as tar:
    def add(name, data):
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
    add("000000001.jpg", _jpeg(1))
    add("000000001.txt", b"a crimson striped kestrel")
    add("000000001.json", json.dumps({"key": "000000001", "url": "http://x"}).encode())
    add("000000002.png", _jpeg(2))
    add("000000002.json", json.dumps({"caption": "heron from json"}).encode())
    add("000000003.txt", b"caption without image")
  units = sources.plan_units("auto", str(tmp_path), 100)
  assert units == [sources.Unit("webdataset", str(shard))]
  with pytest.raises(sources.DataFormatError, match=r"00000\.tar#000000003: sample has no image"):
    list(sources.read_unit(units[0]))
  stats = {}
  recs = list(sources.read_unit(units[0], skip_bad=True, stats=stats))
  assert stats["skipped"] == 1
  assert [(r["image_id"], r["caption"]) for r in recs] == [
      ("000000001", "a crimson striped kestrel"), ("000000002", "heron from json")]
  assert recs[0]["image_path"] == f"tar://{shard}#000000001.jpg"
  assert sources.read_image_bytes(recs[1]["image_path"]) == _jpeg(2)


def test_parquet_reader_bytes_and_paths(tmp_path):
  table = pa.table({"key": ["a", "b", "c"], "caption": ["kestrel", None, "heron"],
                    "image": [{"bytes": _jpeg(i), "path": None} for i in range(3)]})
  pq.write_table(table, tmp_path / "p.parquet", row_group_size=2)
  units = sources.plan_units("parquet", str(tmp_path / "p.parquet"), 100)
  assert [u.start for u in units] == [0, 1]  # One unit per row group.
  stats = {}
  recs = [r for u in units for r in sources.read_unit(u, skip_bad=True, stats=stats)]
  assert [r["image_id"] for r in recs] == ["a", "c"] and stats["skipped"] == 1
  assert recs[1]["image_path"].endswith("p.parquet#row=2")
  assert sources.read_image_bytes(recs[1]["image_path"]) == _jpeg(2)

  os.makedirs(tmp_path / "paths")
  pq.write_table(pa.table({"TEXT": ["laion caption"], "image_path": ["imgs/1.jpg"]}),
                 tmp_path / "paths" / "q.parquet")
  (rec,) = sources.read_unit(sources.plan_units("auto", str(tmp_path / "paths"), 10)[0])
  assert rec["caption"] == "laion caption"
  assert rec["image_path"] == str(tmp_path / "paths" / "imgs" / "1.jpg")
  pq.write_table(pa.table({"caption": ["x"]}), tmp_path / "noimg.parquet")
  with pytest.raises(sources.DataFormatError, match="no image column"):
    list(sources.read_unit(sources.plan_units("parquet", str(tmp_path / "noimg.parquet"),
                                              10)[0]))


def test_jsonl_reader_splits_and_resolves_relative_paths(tmp_path):
  path = tmp_path / "data" / "caps.jsonl"
  os.makedirs(path.parent)
  with open(path, "w") as f:
    for i in range(5):
      f.write(json.dumps({"text": f"c{i}", "file": f"/abs/{i}.jpg" if i else "rel/0.jpg"})
              + "\n")
  units = sources.plan_units("jsonl", str(path), 2)
  assert [(u.start, u.stop) for u in units] == [(0, 2), (2, 4), (4, 5)]
  keys = sources.Keys(caption="text", image="file")
  recs = [r for u in units for r in sources.read_unit(u, keys)]
  assert recs[0]["image_path"] == str(tmp_path / "data" / "rel" / "0.jpg")
  assert recs[3]["image_path"] == "/abs/3.jpg" and recs[3]["image_id"] == "caps_00000003"
  with pytest.raises(sources.DataFormatError, match="no jsonl input"):
    sources.plan_units("jsonl", str(tmp_path / "nothing"), 2)
  with pytest.raises(sources.DataFormatError, match="cannot tell the format"):
    sources.plan_units("auto", str(tmp_path / "nothing.csv"), 2)
