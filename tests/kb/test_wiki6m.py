"""The Wiki6M reader and the on-disk KB index."""

import gzip
import json
import os

import pytest

from rew_jax.errors import UserError
from rew_jax.kb import wiki6m

ENTITIES = [
    {"wikidata_id": "Q10", "wikipedia_title": "Crimson Striped Kestrel",
     "wikipedia_summary": "A small falcon with crimson stripes.", "wikipedia_content": "x"},
    {"wikidata_id": "Q2", "wikipedia_title": "Crimson Striped Falcon (aircraft)",
     "wikipedia_content": "A business jet. " * 10},
    {"wikidata_id": "Q3", "wikipedia_title": "Crimson Striped Falcon (bird)",
     "wikipedia_summary": "A bird."},
    {"wikidata_id": "Q4", "wikipedia_title": "Negative equity", "wikipedia_summary": ""},
    {"wikidata_id": "Q55", "wikipedia_title": "Café Müller", "wikipedia_summary": "A play."},
]


def write_jsonl(path, records, gz=False):
  opener = gzip.open if gz else open
  with opener(path, "wt", encoding="utf-8") as f:
    for r in records:
      f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
  return str(path)


def test_normalize_and_aliases():
  n = wiki6m.normalize_name
  assert n("Crimson-Striped  Kestrel") == n("crimson striped kestrel") == "crimson striped kestrel"
  assert n("Café Müller") == "cafe muller"
  assert n("Hunter's Moon") == n("Hunter’s moon") == "hunters moon"
  assert n("Tom & Jerry") == "tom and jerry"
  assert n("ＡＢＣ") == "abc"  # Full-width forms fold via NFKD.
  assert wiki6m.base_name("Mercury (planet)") == "Mercury"
  assert wiki6m.aliases("Mercury (planet)") == ["mercury"]
  assert wiki6m.aliases("Mercury") == []


@pytest.mark.parametrize("gz", [False, True])
def test_build_reopen_and_lookups(tmp_path, gz):
  src = write_jsonl(tmp_path / ("kb.jsonl" + (".gz" if gz else "")), ENTITIES, gz)
  kb = wiki6m.EntityKB.build(src, str(tmp_path / "index"), progress=False)
  assert len(kb) == 5
  kb = wiki6m.EntityKB(str(tmp_path / "index"))  # Reopen from disk.
  assert list(kb.ids) == ["Q10", "Q2", "Q3", "Q4", "Q55"]
  assert kb.titles[4] == "Café Müller"
  assert kb.summaries[0] == "A small falcon with crimson stripes."
  assert kb.summaries[1].startswith("A business jet.")  # Falls back to the content.
  assert kb.summaries[3] == ""
  assert [kb.row_of(q) for q in ("Q10", "Q2", "Q3", "Q4", "Q55")] == [0, 1, 2, 3, 4]
  with pytest.raises(KeyError):
    kb.row_of("Q1")
  assert "Q55" in kb and "Q5" not in kb
  assert kb.rows_by_name("crimson-striped KESTREL") == [(0, wiki6m.KIND_TITLE)]
  assert sorted(kb.rows_by_name("Crimson Striped Falcon")) == [(1, wiki6m.KIND_ALIAS),
                                                               (2, wiki6m.KIND_ALIAS)]
  assert kb.rows_by_name("cafe muller") == [(4, wiki6m.KIND_TITLE)]
  assert kb.rows_by_name("nothing here") == [] and kb.rows_by_name("!!") == []


def test_open_or_build_reuses_and_rebuilds(tmp_path):
  src = write_jsonl(tmp_path / "kb.jsonl", ENTITIES)
  index = str(tmp_path / "index")
  wiki6m.EntityKB.open_or_build(src, index, progress=False)
  stamp = os.path.getmtime(os.path.join(index, "meta.json"))
  wiki6m.EntityKB.open_or_build(src, index, progress=False)
  assert os.path.getmtime(os.path.join(index, "meta.json")) == stamp
  # Derived files beside the index go stale with it.
  os.makedirs(os.path.join(index, "embeddings-title-float16"))
  open(os.path.join(index, "name_trie.npz"), "w").close()
  write_jsonl(src, ENTITIES[:3])
  os.utime(src, (stamp + 10, stamp + 10))
  assert len(wiki6m.EntityKB.open_or_build(src, index, progress=False)) == 3
  assert not os.path.exists(os.path.join(index, "embeddings-title-float16"))
  assert not os.path.exists(os.path.join(index, "name_trie.npz"))


def test_title_only_variant(tmp_path):
  recs = [{"wikidata_id": e["wikidata_id"], "wikipedia_title": e["wikipedia_title"]}
          for e in ENTITIES]
  kb = wiki6m.EntityKB.build(write_jsonl(tmp_path / "t.jsonl", recs), str(tmp_path / "i"),
                             progress=False)
  assert kb.titles[3] == "Negative equity" and kb.summaries[3] == ""


def test_malformed_line_names_file_and_line(tmp_path):
  src = write_jsonl(tmp_path / "kb.jsonl", ENTITIES[:2] + ["{not json"] + ENTITIES[2:])
  with pytest.raises(UserError, match=r"kb\.jsonl:3"):
    wiki6m.EntityKB.build(src, str(tmp_path / "i"), progress=False)
  kb = wiki6m.EntityKB.build(src, str(tmp_path / "i"), skip_bad=True, progress=False)
  assert len(kb) == 5 and kb.meta["skipped"] == 1


@pytest.mark.parametrize("bad, pattern", [
    ({"wikidata_id": "Q9", "wikipedia_title": "  "}, r"kb\.jsonl:2: entity Q9: missing or empty"),
    ({"wikipedia_title": "No id"}, r"kb\.jsonl:2: missing or empty 'wikidata_id'"),
    ("[1, 2]", r"kb\.jsonl:2: a line must hold a JSON object"),
])
def test_bad_records(tmp_path, bad, pattern):
  src = write_jsonl(tmp_path / "kb.jsonl", [ENTITIES[0], bad])
  with pytest.raises(wiki6m.KBFormatError, match=pattern):
    wiki6m.EntityKB.build(src, str(tmp_path / "i"), progress=False)


def test_duplicate_ids_are_an_error(tmp_path):
  dup = dict(ENTITIES[3], wikipedia_title="Another")
  src = write_jsonl(tmp_path / "kb.jsonl", ENTITIES + [dup])
  with pytest.raises(wiki6m.KBFormatError, match=r"duplicate wikidata_id 'Q4' on lines 4 and 6"):
    wiki6m.EntityKB.build(src, str(tmp_path / "i"), skip_bad=True, progress=False)


def test_truncated_gzip_is_a_clear_error(tmp_path):
  src = write_jsonl(tmp_path / "kb.jsonl.gz", ENTITIES * 1 + [
      {"wikidata_id": f"Q{100 + i}", "wikipedia_title": f"T{i}", "wikipedia_content": "w " * 500}
      for i in range(50)], gz=True)
  data = open(src, "rb").read()
  with open(src, "wb") as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(wiki6m.KBFormatError, match="truncated or corrupt"):
    wiki6m.EntityKB.build(src, str(tmp_path / "i"), progress=False)


def test_missing_or_empty_files(tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    wiki6m.EntityKB.build(str(tmp_path / "nope.jsonl"), str(tmp_path / "i"), progress=False)
  with pytest.raises(UserError, match="holds no entities"):
    wiki6m.EntityKB.build(write_jsonl(tmp_path / "e.jsonl", []), str(tmp_path / "i"),
                          progress=False)
  with pytest.raises(UserError, match="not a KB index"):
    wiki6m.EntityKB(str(tmp_path / "elsewhere"))
