"""Entity embedding shards and the sharded chunked top-k."""

import json
import os

import jax
import numpy as np
import pytest

from rew_jax.errors import UserError
from rew_jax.kb import embeddings, retrieval, wiki6m


class HashEncoder:
  """A deterministic stand-in encoder: unit vectors seeded by the text."""
  dim, model_dir, max_length = 16, "/hash", 32

  def __init__(self):
    self.calls = 0

  def encode(self, texts):
    self.calls += 1
    out = np.stack([np.random.default_rng(abs(hash(t)) % 2**32).normal(size=self.dim)
                    for t in texts]).astype(np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def kb(module_workdir):
  path = module_workdir / "kb.jsonl"
  with open(path, "w") as f:
    for i in range(37):
      f.write(json.dumps({"wikidata_id": f"Q{i + 1}", "wikipedia_title": f"Entity {i}",
                          "wikipedia_summary": f"Summary {i}"}) + "\n")
  return wiki6m.EntityKB.build(str(path), str(module_workdir / "index"), progress=False)


def test_embeddings_shards_resume_and_dtypes(kb, tmp_path):
  enc = HashEncoder()
  out = str(tmp_path / "emb")
  store = embeddings.build_embeddings(kb, enc, out, shard_rows=10, progress=False)
  assert sorted(os.listdir(out)) == ["emb-0000%d.npy" % i for i in range(4)] + [
      "meta.json", "planned.json"]
  expected = enc.encode([f"Entity {i}" for i in range(37)])
  np.testing.assert_allclose(store.as_array().astype(np.float32), expected, atol=1e-3)
  assert store.rows(8, 23).shape == (15, 16)  # Spans shards.
  # Interrupted run: two shards lost → only those are recomputed.
  os.remove(os.path.join(out, "emb-00001.npy"))
  os.remove(os.path.join(out, "emb-00003.npy"))
  enc.calls = 0
  store = embeddings.build_embeddings(kb, enc, out, shard_rows=10, progress=False)
  assert enc.calls == 2
  np.testing.assert_allclose(store.as_array().astype(np.float32), expected, atol=1e-3)
  with pytest.raises(UserError, match="other settings .*text"):
    embeddings.build_embeddings(kb, enc, out, shard_rows=10, text="title_summary",
                                progress=False)
  bf = embeddings.build_embeddings(kb, enc, str(tmp_path / "bf"), dtype="bfloat16",
                                   text="title_summary", progress=False)
  assert bf.as_array().dtype.name == "bfloat16"
  np.testing.assert_allclose(bf.as_array().astype(np.float32),
                             enc.encode([f"Entity {i}. Summary {i}" for i in range(37)]),
                             atol=1e-2)


def test_entity_text_modes():
  assert embeddings.entity_text("T", "S long", "title") == "T"
  assert embeddings.entity_text("T", "S long", "title_summary", summary_chars=1) == "T. S"
  assert embeddings.entity_text("T", "", "title_summary") == "T"
  with pytest.raises(UserError, match="unknown embedding text mode"):
    embeddings.entity_text("T", "", "both")


def _data(n, q, d=24, seed=0):
  rng = np.random.default_rng(seed)
  m = rng.normal(size=(n, d)).astype(np.float16)
  return m, rng.normal(size=(q, d)).astype(np.float32)


@pytest.mark.parametrize("backend", ["jax", "faiss"])
@pytest.mark.parametrize("n, chunk_rows, k", [(1000, 128, 10), (37, 4096, 5), (300, 64, 8)])
def test_exact_equals_numpy_on_8_devices(n, chunk_rows, k, backend):
  assert len(jax.devices()) == 8
  m, q = _data(n, 29)
  searcher = retrieval.TopKSearcher(m, chunk_rows=chunk_rows, query_block=8, backend=backend)
  assert searcher.backend == backend and searcher.chunk_rows % 8 == 0
  scores, rows = searcher.search(q, k)
  ref_scores, ref_rows = retrieval.brute_force_topk(q, m, k)
  np.testing.assert_array_equal(rows, ref_rows)
  np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)


def test_ties_resolve_to_lower_row_across_chunks_and_devices():
  m = np.zeros((200, 4), np.float16)
  m[[3, 50, 77, 150, 199], 0] = 1.0  # Five exact ties spread over chunks and devices.
  q = np.array([[1, 0, 0, 0]], np.float32)
  scores, rows = retrieval.TopKSearcher(m, chunk_rows=64, backend="jax").search(q, 6)
  assert rows[0, :5].tolist() == [3, 50, 77, 150, 199]
  assert rows[0, 5] == 0 and scores[0, 5] == 0  # Then the lowest of the zero-score rows.
  # faiss orders exact ties its own way, but finds the same tied set.
  scores, rows = retrieval.TopKSearcher(m, chunk_rows=64, backend="faiss").search(q, 5)
  assert sorted(rows[0].tolist()) == [3, 50, 77, 150, 199] and (scores == 1).all()


def test_backend_is_chosen_by_device_kind():
  cpu = retrieval.entity_mesh()
  assert retrieval.choose_backend("auto", cpu) == "faiss"  # Installed with the test extra.
  assert retrieval.choose_backend("jax", cpu) == "jax"
  with pytest.raises(ValueError, match="backend 'cuda'"):
    retrieval.choose_backend("cuda", cpu)
  scores, rows = retrieval.merge_topk(np.array([[3., 1.]]), np.array([[7, 8]]),
                                      np.array([[3., 2.]]), np.array([[1, 2]]), 3)
  assert rows.tolist() == [[7, 1, 2]] and scores.tolist() == [[3., 3., 2.]]


def test_streamed_store_equals_resident_and_fewer_entities_than_k(kb, tmp_path):
  store = embeddings.build_embeddings(kb, HashEncoder(), str(tmp_path / "e"), shard_rows=10,
                                      progress=False)
  q = HashEncoder().encode(["Entity 3", "Entity 30", "zzz"])
  streamed = retrieval.TopKSearcher(store, chunk_rows=16, resident_bytes=0, backend="jax")
  assert streamed._resident is None
  resident = retrieval.TopKSearcher(store, chunk_rows=16, backend="jax")
  s1, r1 = streamed.search(q, 4)
  s2, r2 = resident.search(q, 4)
  np.testing.assert_array_equal(r1, r2)
  for resident_bytes in (0, 1 << 20):  # faiss, streamed and resident.
    _, r3 = retrieval.TopKSearcher(store, chunk_rows=16, resident_bytes=resident_bytes,
                                   backend="faiss").search(q, 4)
    np.testing.assert_array_equal(r3[:2], r1[:2])  # "zzz" may tie: faiss's order.
  assert r1[0, 0] == 3 and r1[1, 0] == 30
  s, r = resident.search(q, 100)
  assert r.shape == (3, 37) and sorted(r[0].tolist()) == list(range(37))
  assert resident.search(q[:0], 5)[1].shape == (0, 5)


def test_approx_mode_recall():
  m, q = _data(4096, 64, d=32, seed=1)
  m = m / np.linalg.norm(m.astype(np.float32), axis=1, keepdims=True).astype(np.float16)
  _, rows = retrieval.TopKSearcher(m, chunk_rows=1024, mode="approx", recall_target=0.9,
                                   backend="jax").search(q, 10)
  _, ref = retrieval.brute_force_topk(q, m, 10)
  recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, ref)])
  assert recall >= 0.9, recall


def test_mesh_with_two_axes():
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()).reshape(2, 4), ("data", "fsdp"))
  m, q = _data(500, 9)
  _, rows = retrieval.TopKSearcher(m, mesh=mesh, chunk_rows=128, backend="jax").search(q, 7)
  np.testing.assert_array_equal(rows, retrieval.brute_force_topk(q, m, 7)[1])
