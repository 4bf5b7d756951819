"""WebDataset shards as webdataset's TarWriter writes them, img2dataset's sidecar accounting,
a bucket's shards, and the url lists' column spellings."""

import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from rew_jax import storage
from rew_jax.kb import sources


def _image(fmt, value):
  buf = io.BytesIO()
  Image.new("RGB", (8, 6), (value, 255 - value, 7)).save(buf, format=fmt)
  return buf.getvalue()


JPG, PNG, WEBP = _image("JPEG", 10), _image("PNG", 20), _image("WEBP", 30)


def _shard(path, samples):
  with wds.TarWriter(str(path)) as writer:
    for sample in samples:
      writer.write(sample)
  return str(path)


def _read(path, keys=sources.Keys(), **kw):
  stats = {}
  recs = [r for u in sources.plan_units("auto", str(path), 100)
          for r in sources.read_unit(u, keys, stats=stats, **kw)]
  return recs, stats


def test_tarwriter_shards_dotted_dirs_upper_case_and_png_webp(tmp_path):
  shard = _shard(tmp_path / "00000.tar", [
      {"__key__": "crawl.v1/000000001", "JPG": JPG, "txt": "a kestrel on a fence"},
      {"__key__": "crawl.v1/000000002", "png": PNG,
       "json": {"caption": "heron from the json", "uid": "u-2"}},
      {"__key__": "x.y.z/000000007", "webp": WEBP, "TXT": "upper-case caption member"},
  ])
  recs, stats = _read(tmp_path, sources.Keys(image_id="uid"))
  assert stats == {"skipped": 0}
  # The key is the path up to the basename's first dot; a JSON field names the id when set.
  assert [(r["image_id"], r["caption"]) for r in recs] == [
      ("000000001", "a kestrel on a fence"), ("u-2", "heron from the json"),
      ("000000007", "upper-case caption member")]
  assert [r["image_path"] for r in recs] == [
      f"tar://{shard}#crawl.v1/000000001.JPG", f"tar://{shard}#crawl.v1/000000002.png",
      f"tar://{shard}#x.y.z/000000007.webp"]
  assert [sources.read_image_bytes(r["image_path"]) for r in recs] == [JPG, PNG, WEBP]


def test_a_duplicate_extension_is_an_error_naming_the_sample(tmp_path):
  _shard(tmp_path / "00000.tar", [
      {"__key__": "000000001", "jpg": JPG, "txt": "one"},
      {"__key__": "000000002", "jpg": JPG, "JPG": PNG, "txt": "two"},  # jpg twice, by case.
      {"__key__": "000000003", "jpg": JPG, "txt": "three"},
  ])
  with pytest.raises(sources.DataFormatError,
                     match=r"00000\.tar#000000002: duplicate member '000000002\.(jpg|JPG)'"):
    _read(tmp_path)
  recs, stats = _read(tmp_path, skip_bad=True)
  assert [r["image_id"] for r in recs] == ["000000001", "000000003"]
  assert stats["skipped"] == 1 and stats["skips"][0]["where"].endswith("00000.tar#000000002")


def _sidecar(path, rows):
  cols = {k: [r[k] for r in rows] for k in ("key", "status", "error_message", "url")}
  pq.write_table(pa.table(cols), path)


def test_img2dataset_sidecar_accounts_for_every_sample(tmp_path):
  # img2dataset's layout: keys not contiguous in the tar, failures only in the parquet.
  _shard(tmp_path / "00000.tar", [
      {"__key__": "000000000", "jpg": JPG, "txt": "zero",
       "json": {"key": "000000000", "status": "success", "caption": "zero"}},
      {"__key__": "000000002", "jpg": JPG, "txt": "two",
       "json": {"key": "000000002", "status": "success", "caption": "two"}},
  ])
  rows = [("000000000", "success", None), ("000000001", "failed_to_download",
                                            "HTTP Error 404: File not found"),
          ("000000002", "success", None), ("000000003", "failed_to_resize",
                                           "Image decoding error")]
  _sidecar(tmp_path / "00000.parquet", [dict(key=k, status=s, error_message=e, url=f"u{k}")
                                        for k, s, e in rows])
  assert sources.detect_format(str(tmp_path)) == "webdataset"  # The tars, not the sidecars.
  recs, stats = _read(tmp_path)
  assert [r["image_id"] for r in recs] == ["000000000", "000000002"]
  assert stats["upstream"] == {"failed_to_download": 1, "failed_to_resize": 1}
  assert [(u["key"], u["status"]) for u in stats["upstream_failed"]] == [
      ("000000001", "failed_to_download"), ("000000003", "failed_to_resize")]
  assert stats["upstream_failed"][0]["error"] == "HTTP Error 404: File not found"

  # A sample the sidecar lists as downloaded but the tar lacks is lost data: an error.
  _sidecar(tmp_path / "00000.parquet", [dict(key=k, status="success", error_message=None,
                                             url="") for k in ("000000000", "000000002",
                                                               "000000009")])
  with pytest.raises(sources.DataFormatError, match=r"00000\.tar#000000009: listed as "
                     r"downloaded in 00000\.parquet but absent from the tar"):
    _read(tmp_path)


def test_shards_in_a_bucket_read_like_local_ones(gcs, tmp_path):
  local = tmp_path / "local"
  os.makedirs(local)
  _shard(local / "00000.tar", [{"__key__": "a.b/000000001", "jpg": JPG, "txt": "remote one"}])
  _shard(local / "00001.tar", [{"__key__": "000000005", "png": PNG,
                                "json": {"caption": "remote two", "key": "000000005"}}])
  _sidecar(local / "00001.parquet", [dict(key="000000005", status="success",
                                          error_message=None, url="u"),
                                     dict(key="000000006", status="failed_to_download",
                                          error_message="timeout", url="v")])
  remote = gcs.url("web_shards")
  for name in sorted(os.listdir(local)):
    storage.write_bytes(f"{remote}/{name}", (local / name).read_bytes())
  recs, stats = _read(remote)
  local_recs, local_stats = _read(local)
  assert [r["caption"] for r in recs] == [r["caption"] for r in local_recs] == [
      "remote one", "remote two"]
  assert recs[0]["image_path"] == f"tar://{remote}/00000.tar#a.b/000000001.jpg"
  assert [sources.read_image_bytes(r["image_path"]) for r in recs] == [JPG, PNG]
  assert stats["upstream"] == local_stats["upstream"] == {"failed_to_download": 1}


@pytest.mark.parametrize("name,columns", [
    ("laion", {"URL": ["http://h/1.jpg"], "TEXT": ["a laion caption"], "WIDTH": [8]}),
    ("coyo", {"id": [1234], "url": ["http://h/1.jpg"], "text": ["a laion caption"]}),
    ("cc12m", {"url": ["http://h/1.jpg"], "caption": ["a laion caption"]}),
    ("datacomp", {"uid": ["00ab"], "url": ["http://h/1.jpg"], "text": ["a laion caption"]}),
])
def test_url_list_column_spellings(tmp_path, name, columns):
  pq.write_table(pa.table(columns), tmp_path / "list.parquet")
  keys = sources.keys_for(name, "caption", "image_path", "image_id")
  (rec,), _ = _read(tmp_path / "list.parquet", keys)
  expected_id = {"laion": "list_00000000", "coyo": "1234", "cc12m": "list_00000000",
                 "datacomp": "00ab"}[name]
  # A URL is kept as it is (not joined to the file's folder): curation fetches it.
  assert rec == {"image_id": expected_id, "caption": "a laion caption",
                 "image_path": "http://h/1.jpg"}
  with open(tmp_path / "list.jsonl", "w") as f:
    f.write(json.dumps({k: v[0] for k, v in columns.items()}) + "\n")
  (rec,), _ = _read(tmp_path / "list.jsonl", keys)
  assert rec["image_path"] == "http://h/1.jpg" and rec["caption"] == "a laion caption"
  with pytest.raises(sources.DataFormatError, match="unknown data.columns 'laoin'"):
    sources.keys_for("laoin", "caption", "image_path", "image_id")
