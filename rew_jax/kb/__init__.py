"""The entity KB and candidate retrieval (the Entity-WebLI step).

    from rew_jax import kb
    index = kb.EntityKB.build("Wiki6M_ver_1_0.jsonl", "W/kb")   # or kb.EntityKB("W/kb")
    encoder = kb.TextEncoder()                                  # MiniLM, local weights
    vectors = encoder.encode(["Eiffel Tower", "Big Ben"])        # [N, 384], L2-normalised
    scores, rows = kb.TopKSearcher(vectors).search(encoder.encode(["a tower in paris"]), k=1)

Modules: wiki6m (streaming KB index), text_encoder, embeddings, retrieval (sharded top-k),
bm25, resolver (names → entities), codes (GER-ALD codes), sources (readers), candidates.
Names load on first use.
"""

from rew_jax import registry as _registry

_NAMES = {
    "EntityKB": ".wiki6m",
    "Entity": ".wiki6m",
    "read_wiki6m": ".wiki6m",
    "TextEncoder": ".text_encoder",
    "EmbeddingStore": ".embeddings",
    "build_embeddings": ".embeddings",
    "TopKSearcher": ".retrieval",
    "brute_force_topk": ".retrieval",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = _registry.lazy_names(__name__, _NAMES)
