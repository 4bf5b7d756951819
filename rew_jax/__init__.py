"""rew_jax: web-scale visual entity recognition with LLM-refined data, in JAX.

Stages (one folder each): `kb` (entity KB and candidate retrieval), `curation`
(LLM verify/correct + rationale + QA), `records` (the REW record contract), `data`
(tokenizers, preprocessing, Grain pipelines, the embedded synthetic world), `models`
(GiT encoder-decoder), `evaluators` (OVEN, zero-shot, kNN). Run `python -m rew_jax --help`.
"""

__version__ = "0.1.0"
