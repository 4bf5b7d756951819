"""Candidate retrieval (Entity-WebLI step) on the embedded world, or on your own data.

Generate the world, then retrieve the top-10 KB entities for every web caption:

  python -m rew_jax world --config configs/demo.py:runlocal --workdir runs/cand
  python -m rew_jax candidates --config configs/candidates_demo.py --workdir runs/cand

Variants (`--config configs/candidates_demo.py:method=bm25,k=20`):
  method   embedding (all-MiniLM-L6-v2 cosine, the default) or bm25 (lexical, over titles)
  k        candidates kept per image

Real data: point the KB and the captions at your files, e.g.
  --config.candidates.kb.path=/data/Wiki6M_ver_1_0.jsonl.gz
  --config.candidates.kb.index_dir=/data/wiki6m_index
  --config.candidates.data.format=webdataset --config.candidates.data.path=/data/laion/shards
Your own copy of the text encoder (any local Hugging Face BERT/MiniLM folder):
  --config.candidates.encoder.model_dir=/models/all-MiniLM-L6-v2
"""

from rew_jax import config as config_lib
from rew_jax.kb import candidates


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, method="embedding", k=10)
  c = candidates.default_config()
  c.retrieval.method = arg.method
  c.retrieval.k = arg.k
  c.data.format = "world"
  c.data.records_per_shard = 1000
  return config_lib.ConfigDict(dict(candidates=c))
