"""BM25 over titles, the name resolver, and the serialised codes and name trie (the code rule
itself: test_codes.py)."""

import json
import os

import numpy as np
import pytest
import tokenizers

from rew_jax.kb import bm25 as bm25_lib
from rew_jax.kb import codes as codes_lib
from rew_jax.kb import resolver as resolver_lib
from rew_jax.kb import retrieval, text_encoder, wiki6m
from rew_jax.models import trie as trie_lib

TITLES = [
    "Crimson Striped Kestrel",            # 0
    "Crimson Striped Kestrels (band)",    # 1  near-duplicate
    "Crimson Striped Falcon (aircraft)",  # 2  ambiguous base name
    "Crimson Striped Falcon (bird)",      # 3
    "Negative equity",                    # 4
    "Café Müller",                        # 5
    "Mercury",                            # 6  a bare title beats the aliases below
    "Mercury (planet)",                   # 7
    "Mercury (element)",                  # 8
    "Hunter's Moon",                      # 9
    "Azure Crested Heron",                # 10
    "Azure Crested Herons",               # 11 differs by one letter
]


@pytest.fixture(scope="module")
def kb(module_workdir):
  path = module_workdir / "kb.jsonl"
  with open(path, "w") as f:
    for i, t in enumerate(TITLES):
      f.write(json.dumps({"wikidata_id": f"Q{100 + i}", "wikipedia_title": t}) + "\n")
  return wiki6m.EntityKB.build(str(path), str(module_workdir / "index"), progress=False)


@pytest.fixture(scope="module")
def tokenizer():
  tok = tokenizers.Tokenizer.from_file(
      os.path.join(text_encoder.default_model_dir(), "tokenizer.json"))
  tok.no_padding()
  return tok


@pytest.fixture(scope="module")
def resolver(kb):
  return resolver_lib.NameResolver(kb, bm25=bm25_lib.TitleBM25.open_or_build(kb))


def test_bm25_ranks_titles_and_reloads(kb):
  index = bm25_lib.TitleBM25.open_or_build(kb)
  scores, rows = index.search(["a crimson striped kestrel on a post", "negative equities",
                               "zzz qqq", ""], 3)
  assert rows[0, 0] == 0 and scores[0, 0] > scores[0, 1] > 0
  assert rows[1, 0] == 4  # Plural folding.
  assert (rows[2] == -1).all() and (rows[3] == -1).all()
  reloaded = bm25_lib.TitleBM25.load(kb.path("bm25"))
  np.testing.assert_array_equal(reloaded.search(["striped falcon"], 2)[1],
                                index.search(["striped falcon"], 2)[1])


@pytest.mark.parametrize("name, row, method", [
    ("Crimson Striped Kestrel", 0, "exact"),
    ("crimson-striped kestrel", 0, "normalized"),
    ("  'Crimson Striped Kestrel'  ", 0, "exact"),
    ("Crimson Striped Kestrels", 1, "alias"),        # Not confused with row 0.
    ("CAFE MULLER", 5, "normalized"),
    ("Hunters Moon", 9, "normalized"),
    ("Mercury", 6, "exact"),                         # Not the ambiguous aliases.
    ("Mercury (planet)", 7, "exact"),
    ("mercury planet", 7, "normalized"),
    ("Azure Crested Herons", 11, "exact"),
    ("Azure Crested Heron", 10, "exact"),
    ("Crimson Stripped Kestrel", 0, "fuzzy"),        # A typo.
    ("Negative equitty", 4, "fuzzy"),
    ("Q104", 4, "id"),
])
def test_resolver_tricky_names(resolver, name, row, method):
  res = resolver.resolve(name)
  assert (res.row, res.method) == (row, method), res
  assert res.entity_id == f"Q{100 + row}" and res.resolved


def test_resolver_ambiguity_uses_candidates_or_abstains(resolver):
  assert resolver.resolve("Crimson Striped Falcon").method == "abstain"
  res = resolver.resolve("Crimson Striped Falcon", candidates=["Q110", "Q103"])
  assert (res.row, res.method) == (3, "alias")
  # Candidates naming both readings still leave it ambiguous.
  assert not resolver.resolve("Crimson Striped Falcon", candidates=["Q102", "Q103"]).resolved


@pytest.mark.parametrize("name", ["", "   ", "Blue Whale", "Q999", "a bird", "Crimson"])
def test_resolver_abstains_on_unknown(resolver, name):
  res = resolver.resolve(name)
  assert res.method == "abstain" and res.entity_id is None and not res.resolved


def test_resolver_embedding_step(kb):
  class OneHot:
    def encode(self, texts):
      return np.eye(len(TITLES), dtype=np.float32)[[10 if "heron" in t else 4 for t in texts]]

  searcher = retrieval.TopKSearcher(np.eye(len(TITLES), dtype=np.float16))
  res = resolver_lib.NameResolver(kb, encoder=OneHot(), searcher=searcher).resolve(
      "grey heron-like wader")
  assert (res.row, res.method) == (10, "embedding") and res.score == pytest.approx(1.0)


def test_name_trie_and_codes_serialised_next_to_index(kb, tokenizer):
  paths = codes_lib.build_name_artifacts(kb, tokenizer)
  assert {os.path.dirname(p) for p in paths.values()} == {kb.index_dir}
  names = codes_lib.tokenize_names(tokenizer, TITLES)
  assert names[0] == tokenizer.encode("Crimson Striped Kestrel", add_special_tokens=False).ids
  assert codes_lib.CLS_ID not in names[0]
  trie = trie_lib.load(paths["name_trie"])
  for row, seq in enumerate(names):
    node = np.zeros(1, np.int32)
    for tok in seq + [codes_lib.SEP_ID]:
      node = trie_lib.advance(trie, node, np.array([tok], np.int32))
    assert int(trie.leaf_row[int(node[0])]) == row
  table = codes_lib.load_codes(paths["ald_codes"])
  assert [i.decode() for i in table.ids] == [f"Q{100 + i}" for i in range(len(TITLES))]
  codes = table.codes
  assert codes.shape == (len(TITLES), 5) and table.length == 3
  assert len({tuple(c) for c in codes.tolist()}) == len(TITLES)
  code_trie = trie_lib.load(paths["code_trie"])
  assert code_trie.num_nodes > len(TITLES)
