"""LLM curation with Gemini (google-genai; `pip install 'rew_jax[gcp]'`).

  export GEMINI_API_KEY=...        # read from the environment only; never written anywhere
  python -m rew_jax curate --config configs/curate_gemini.py --workdir W \
      --config.curation.candidates_dir=W/candidates --config.curation.kb_source=/data/Wiki6M_ver_1_0.jsonl.gz

Vertex AI instead of a key (Application Default Credentials, e.g. a Dataflow worker's
service account): --config.curation.gemini.vertex_project=P --config.curation.gemini.vertex_location=R.
W/candidates holds the candidates step's shards (`python -m rew_jax candidates ...`); images
are found under `curation.image_root` (or the root named in the candidates manifest).
`oven_dir=DIR` leaves out web images that are near-copies of OVEN's validation and test
images (DIR/oven_{entity,query}_{val,test}.jsonl, DIR/images), as the paper deduplicates
against its evaluation sets; add zero-shot sets' image folders with
`--config.curation.dedup.image_dirs=...`. The report counts what was removed.
Rate limits: set `curation.rate_limit_per_s` to the project's quota; 429s are retried with
backoff honouring Retry-After. Prices (USD per million tokens) feed the report's cost estimate.
"""

from rew_jax import config as config_lib
from rew_jax.curation import beam_options
from rew_jax.curation import dedup
from rew_jax.curation import run
from rew_jax.kb import candidates


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, model="gemini-2.5-flash", mode="one_call", oven_dir="")
  config = config_lib.ConfigDict()
  # The candidates step (rew_jax.kb.candidates); point data/kb at your files, or run it
  # separately and leave W/candidates in place.
  config.candidates = candidates.default_config()
  config.candidates.data.format = "auto"
  config.curation = run.default_config()
  config.curation.backend = "gemini"
  config.curation.mode = arg.mode
  if arg.oven_dir:
    config.curation.dedup.update(dedup.oven_eval(arg.oven_dir))
  config.curation.concurrency = 32
  config.curation.rate_limit_per_s = 20.0
  config.curation.price_per_mtok_in = 0.30
  config.curation.price_per_mtok_out = 2.50
  config.curation.gemini = config_lib.ConfigDict(dict(
      model=arg.model, api_key_env="GEMINI_API_KEY", base_url="", api_version="",
      temperature=0.0, max_output_tokens=1024, structured_output=True,
      vertex_project="", vertex_location=""))  # Both set: Vertex AI with ADC, no key.
  config.beam = beam_options.default_config()  # --runner direct|dask|dataflow
  return config
