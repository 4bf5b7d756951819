"""OVEN and Wiki6M as released: miniatures of the downloaded files, written here with json,
csv and tarfile (never with rew_jax's writers), read by `records from-oven`, the OVEN
evaluator and the KB reader.

The miniature follows the official READMEs: annotation lines with data_id, image_id,
question, entity_id, entity_text, data_split; `ovenid2impath.csv` rows `image_id,path` with
no header, the path relative to the image tree (a source dataset's own path); image tar
shards. Two kinds of shard are made, since both are read: one whose members are named by
OVEN id (`shard01/<xx>/<id>.<ext>`), one whose members sit at the csv's paths.
"""

import csv
import gzip
import io
import json
import os
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from rew_jax import __main__ as cli
from rew_jax import records
from rew_jax.data import oven_files
from rew_jax.evaluators import mapping as mapping_lib
from rew_jax.evaluators import oven
from rew_jax.kb import wiki6m

KB_IDS = ["Q10", "Q20", "Q30"]
TITLES = ["Dassault Falcon 900", "Crimson Kestrel", "Golden Gate Bridge"]
PP = "decode|resize(4)|tokenize(key='prompt', bos=True, max_len=8)|pad(8, key='prompt')"
# image id → (its path in the source tree, the KB row its grey level encodes, format).
IMAGES = {
    "oven_00000000": ("aircraft/data/images/1025794.jpg", 0, "JPEG"),
    "oven_00000001": ("inat/train/Aves/03111_Falco/2b3c.jpg", 1, "JPEG"),
    "oven_01000002": ("gldv2/train/0/0/0/00a1b2.png", 2, "PNG"),
    "oven_02000003": ("coco/val2014/COCO_val2014_000000000042.png", 1, "PNG"),
}
SHARD_OF = {"oven_00000000": 1, "oven_00000001": 1, "oven_01000002": 2, "oven_02000003": 2}
ANNOTATIONS = {
    "oven_entity_train.jsonl": [
        ("oven_entity_train_00000000", "oven_00000000", "what is the model of this aircraft?",
         0, "entity_train"),
        ("oven_entity_train_00000001", "oven_00000001", "what is this bird?", 1, "entity_train"),
        ("oven_entity_train_00000002", "oven_01000002", "where is this?", 2, "entity_train")],
    "oven_query_train.jsonl": [  # The query set reuses an entity image.
        ("oven_query_train_00000000", "oven_00000001", "which falcon is shown?", 1,
         "query_train")],
    "oven_entity_val.jsonl": [
        ("oven_entity_val_00000000", "oven_00000000", "what is this aircraft?", 0,
         "entity_val_seen"),
        ("oven_entity_val_00000001", "oven_02000003", "what is this bird?", 2,
         "entity_val_unseen")],
    "oven_query_val.jsonl": [
        ("oven_query_val_00000000", "oven_01000002", "what is this bridge?", 2,
         "query_val_seen"),
        ("oven_query_val_00000001", "oven_00000001", "which bird is it?", 1,
         "query_val_unseen")],
}


def _grey(row):
  return 40 + 80 * row


def _encode(row, fmt, size):
  buf = io.BytesIO()
  Image.fromarray(np.full((size, size + 4, 3), _grey(row), np.uint8)).save(buf, fmt)
  return buf.getvalue()


def _write_tar(path, members):
  with tarfile.open(path, "w") as tar:
    for name, data in members:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


def _write_csv(path, rows):
  with open(path, "w", newline="", encoding="utf-8") as f:
    csv.writer(f).writerows(rows)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
  root = tmp_path_factory.mktemp("OVEN")
  data = {i: _encode(row, fmt, 10 + k) for k, (i, (_, row, fmt)) in enumerate(IMAGES.items())}
  for name, rows in ANNOTATIONS.items():
    with open(root / name, "w", encoding="utf-8") as f:
      for data_id, image_id, question, row, split in rows:
        f.write(json.dumps({"data_id": data_id, "image_id": image_id, "question": question,
                            "entity_id": KB_IDS[row], "entity_text": TITLES[row],
                            "data_split": split}) + "\n")
  _write_csv(root / "ovenid2impath.csv", [(i, p) for i, (p, _, _) in IMAGES.items()])
  # (a) The image tree the csv's paths are relative to.
  for image_id, (rel, _, _) in IMAGES.items():
    (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / "images" / rel).write_bytes(data[image_id])
  # (b) The shards: members named by OVEN id in shard01, at the csv's paths in shard02.
  ext = {"JPEG": ".jpg", "PNG": ".png"}
  _write_tar(root / "shard01.tar",
             [(f"shard01/{i.split('_')[-1][:2]}/{i}{ext[IMAGES[i][2]]}", data[i])
              for i in IMAGES if SHARD_OF[i] == 1] + [("shard01/README.txt", b"not an image")])
  _write_tar(root / "shard02.tar", [(IMAGES[i][0], data[i]) for i in IMAGES if SHARD_OF[i] == 2])
  # (c) The per-id layout, as the official merge script lays the images out.
  for image_id, (_, _, fmt) in IMAGES.items():
    folder = root / "oven_images" / image_id.split("_")[-1][:2]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{image_id}{ext[fmt]}").write_bytes(data[image_id])
  return {"root": root, "data": data, "tars": [str(root / "shard01.tar"),
                                               str(root / "shard02.tar")]}


def _from_oven(root, out, *image_args):
  return cli.main(["records", "from-oven", "--references", str(root / "oven_entity_train.jsonl"),
                   str(root / "oven_query_train.jsonl"), *image_args, "--out", str(out)])


def test_from_oven_reads_the_csv_folder_the_tars_and_the_per_id_layout_alike(released,
                                                                             tmp_path):
  root, data = released["root"], released["data"]
  csv_path = str(root / "ovenid2impath.csv")
  layouts = {
      "csv": ["--image-dir", str(root / "images"), "--image-mapping", csv_path],
      "tars": ["--image-tars", str(root / "shard*.tar"), "--image-mapping", csv_path],
      "tar_folder": ["--image-tars", str(root), "--image-mapping", csv_path],
      "per_id": ["--image-dir", str(root / "oven_images")],
  }
  got = {}
  for name, args in layouts.items():
    assert _from_oven(root, tmp_path / name, *args) == 0
    got[name] = list(records.read_records(str(tmp_path / name)))
  recs = got["csv"]
  assert [r.image_id for r in recs] == ["oven_00000000", "oven_00000001", "oven_01000002",
                                        "oven_00000001"]
  assert [r.question for r in recs] == ["what is the model of this aircraft?",
                                        "what is this bird?", "where is this?",
                                        "which falcon is shown?"]
  assert [(r.entity_id, r.entity_name) for r in recs] == [
      ("Q10", "Dassault Falcon 900"), ("Q20", "Crimson Kestrel"),
      ("Q30", "Golden Gate Bridge"), ("Q20", "Crimson Kestrel")]
  assert [r.split for r in recs] == ["entity_train"] * 3 + ["query_train"]
  assert {r.curation_status for r in recs} == {"kept"} and {r.backend for r in recs} == {"oven"}
  assert all(r.image == data[r.image_id] for r in recs)
  assert recs[2].image.startswith(b"\x89PNG") and recs[0].image.startswith(b"\xff\xd8")
  for name in ("tars", "tar_folder", "per_id"):
    assert got[name] == recs, name
  assert records.Manifest.load(str(tmp_path / "tars")).total == 4


def test_index_tars_prefers_the_csv_path_and_reads_members_in_place(released):
  root, data = released["root"], released["data"]
  rows = oven_files.read_image_mapping(str(root / "ovenid2impath.csv"))
  assert rows == {i: p for i, (p, _, _) in IMAGES.items()}
  members = oven_files.index_tars(released["tars"], set(IMAGES), rows)
  assert {i: os.path.basename(m.tar) for i, m in members.items()} == {
      i: f"shard0{s}.tar" for i, s in SHARD_OF.items()}
  assert members["oven_01000002"].name == IMAGES["oven_01000002"][0]  # Found at its csv path.
  assert members["oven_00000001"].name == "shard01/00/oven_00000001.jpg"  # Found by its id.
  images = pickle.loads(pickle.dumps(oven_files.TarImages(members)))  # Grain workers.
  assert {i: images.read(i) for i in IMAGES} == data


def test_missing_mapping_row_and_missing_tar_member_name_the_id_and_file(released, tmp_path,
                                                                        capsys):
  root = released["root"]
  partial = tmp_path / "ovenid2impath.csv"
  _write_csv(partial, [(i, p) for i, (p, _, _) in IMAGES.items() if i != "oven_01000002"])
  assert _from_oven(root, tmp_path / "a", "--image-dir", str(root / "images"),
                    "--image-mapping", str(partial)) == 2
  err = capsys.readouterr().err
  assert f"image 'oven_01000002' has no row in {partial}" in err
  assert not os.path.exists(tmp_path / "a")  # Stopped before writing anything.

  assert _from_oven(root, tmp_path / "b", "--image-tars", released["tars"][0],
                    "--image-mapping", str(root / "ovenid2impath.csv")) == 2
  err = capsys.readouterr().err
  assert ("image 'oven_01000002' is in none of the tar shards shard01.tar: no member "
          "oven_01000002.<ext>, nor one at 'gldv2/train/0/0/0/00a1b2.png' (its row in "
          f"{root / 'ovenid2impath.csv'})") in err

  with pytest.raises(oven_files.OvenFormatError,
                     match=r"image 'oven_01000002' \(and 1 more\) is in none of the tar "
                           r"shards shard01.tar: no member oven_01000002.<ext>$"):
    oven_files.open_images(tars=released["tars"][:1], ids=set(IMAGES))
  bad = tmp_path / "bad.csv"
  bad.write_text("oven_00000000,aircraft/a.jpg\noven_00000001\n")
  with pytest.raises(oven_files.OvenFormatError,
                     match=r"bad.csv:2: expected 'image_id,relative path', got 'oven_00000001'"):
    oven_files.read_image_mapping(str(bad))
  # A header row is tolerated; a csv path missing from the folder names the id and the csv.
  _write_csv(bad, [("image_id", "image_path"), ("oven_00000000", "aircraft/gone.jpg")])
  images = oven_files.open_images(str(root / "empty"), mapping=str(bad), ids={"oven_00000000"})
  with pytest.raises(oven_files.OvenFormatError, match=r"image 'oven_00000000': .*bad.csv maps "
                                                       r"it to 'aircraft/gone.jpg', which is "
                                                       r"not under"):
    images.read("oven_00000000")


def _predict_rows(params, batch):
  grey = batch["image"][..., 0].mean(axis=(1, 2))
  return {"rows": np.round((grey - 40) / 80).astype(np.int32)}


def test_oven_evaluator_loads_images_from_the_csv_folder_and_the_tars(released):
  root, data = released["root"], released["data"]
  refs = [str(root / "oven_entity_val.jsonl"), str(root / "oven_query_val.jsonl")]
  csv_path = str(root / "ovenid2impath.csv")
  layouts = {"csv": dict(image_dir=str(root / "images"), image_mapping=csv_path),
             "tars": dict(image_tars=released["tars"], image_mapping=csv_path),
             "per_id": dict(image_dir=str(root / "oven_images"))}
  results = {}
  for name, images in layouts.items():
    evaluator = oven.Evaluator(_predict_rows, references=refs, pp=PP, batch_size=2,
                               num_threads=1, mapper=mapping_lib.RowMapper(KB_IDS), **images)
    q = evaluator.questions
    assert [q[i]["image"] for i in range(len(q))] == [
        data[i] for i in ("oven_00000000", "oven_02000003", "oven_01000002", "oven_00000001")]
    assert q[1]["prompt"] == "what is this bird?" and q[1]["image_id"] == "oven_02000003"
    results[name] = dict(evaluator.run({}))
  # The unseen entity image shows row 1 where the truth is row 2: one wrong of four.
  assert results["csv"]["oven/entity_seen"] == 100.0
  assert results["csv"]["oven/entity_unseen"] == 0.0
  assert results["csv"]["oven/query_seen"] == results["csv"]["oven/query_unseen"] == 100.0
  assert results["tars"] == results["csv"] == results["per_id"]
  assert {"image_tars", "image_mapping"} <= set(oven.Evaluator.default_config())
  partial = root.parent / "partial.csv"
  _write_csv(partial, [(i, p) for i, (p, _, _) in IMAGES.items() if i != "oven_02000003"])
  with pytest.raises(oven_files.OvenFormatError, match="image 'oven_02000003' has no row in"):
    oven.Evaluator(_predict_rows, references=refs, image_tars=released["tars"],
                   image_mapping=str(partial), mapper=mapping_lib.RowMapper(KB_IDS))


WIKI6M = [  # The full file's fields; most lines lack an image url, some a summary.
    {"wikidata_id": "Q10", "wikipedia_title": "Dassault Falcon 900",
     "wikipedia_summary": "A French business jet.",
     "wikipedia_content": "The Dassault Falcon 900 is a French business jet.",
     "wikipedia_image_url": "https://upload.wikimedia.org/falcon900.jpg"},
    {"wikidata_id": "Q20", "wikipedia_title": "Crimson Kestrel",
     "wikipedia_content": "The crimson kestrel is a small falcon."},
    {"wikidata_id": "Q30", "wikipedia_title": "Golden Gate Bridge", "wikipedia_summary": None,
     "wikipedia_content": "A suspension bridge.", "wikipedia_image_url": None},
    {"wikidata_id": "Q40", "wikipedia_title": "Negative equity"},  # As the title-only file.
]


def test_wiki6m_lines_without_summary_or_image_url_are_normal(tmp_path):
  path = tmp_path / "Wiki6M_ver_1_0.jsonl.gz"
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.writelines(json.dumps(e) + "\n" for e in WIKI6M)
  stats = {}
  entities = list(wiki6m.read_wiki6m(str(path), stats=stats, with_content=True))
  assert stats["skipped"] == 0
  assert [e.wikidata_id for e in entities] == ["Q10", "Q20", "Q30", "Q40"]
  assert [e.summary for e in entities] == ["A French business jet.",
                                           "The crimson kestrel is a small falcon.",
                                           "A suspension bridge.", ""]
  assert [e.image_url for e in entities] == ["https://upload.wikimedia.org/falcon900.jpg", "",
                                             "", ""]
  assert entities[3].content == "" and entities[1].line == 2
  kb = wiki6m.EntityKB.build(str(path), str(tmp_path / "kb"), progress=False)
  assert len(kb) == 4 and kb.meta["skipped"] == 0
  assert list(kb.titles) == [e["wikipedia_title"] for e in WIKI6M]
  assert kb.summaries[1] == "The crimson kestrel is a small falcon." and kb.summaries[3] == ""
  # An id and a title stay required.
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps(WIKI6M[0]) + "\n" + json.dumps({"wikidata_id": "Q50"}) + "\n")
  with pytest.raises(wiki6m.KBFormatError, match=r"bad.jsonl:2: entity Q50: missing or empty "
                                                 r"'wikipedia_title'"):
    list(wiki6m.read_wiki6m(str(bad)))
