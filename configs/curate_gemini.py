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
from rew_jax.curation import section
from rew_jax.kb import candidates


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, model="gemini-2.5-flash", mode="one_call", oven_dir="")
  config = config_lib.ConfigDict()
  # The candidates step (rew_jax.kb.candidates); point data/kb at your files, or run it
  # separately and leave W/candidates in place.
  config.candidates = candidates.default_config()
  config.candidates.data.format = "auto"
  config.curation = section.default_config("gemini")  # Its options: backends/gemini.py.
  config.curation.mode = arg.mode
  if arg.oven_dir:
    config.curation.dedup.update(dedup.oven_eval(arg.oven_dir))
  config.curation.concurrency = 32
  config.curation.rate_limit_per_s = 20.0
  config.curation.price_per_mtok_in = 0.30
  config.curation.price_per_mtok_out = 2.50
  config.curation.gemini.model = arg.model
  config.curation.gemini.api_key_env = "GEMINI_API_KEY"
  # Both set: Vertex AI with Application Default Credentials, no key.
  config.curation.gemini.vertex_project = ""
  config.curation.gemini.vertex_location = ""
  config.beam = beam_options.default_config()  # --runner direct|dask|dataflow
  return config
