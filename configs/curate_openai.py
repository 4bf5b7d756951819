"""LLM curation with an OpenAI-compatible server, e.g. vLLM serving Gemma 3 or PaliGemma.

  vllm serve google/gemma-3-27b-it --port 8000 &        # on the serving machine
  python -m rew_jax curate --config configs/curate_openai.py:base_url=http://HOST:8000/v1 \
      --workdir W --config.curation.candidates_dir=W/candidates \
      --config.curation.kb_source=/data/Wiki6M_ver_1_0.jsonl.gz

The request carries the image as a data: URL and a `json_schema` response format. If the
server wants a key, name its environment variable: `--config.curation.openai.api_key_env=VAR`.
"""

from rew_jax import config as config_lib
from rew_jax.curation import beam_options
from rew_jax.curation import section
from rew_jax.kb import candidates


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, base_url="http://127.0.0.1:8000/v1",
                             model="google/gemma-3-27b-it", mode="one_call")
  config = config_lib.ConfigDict()
  # The candidates step (rew_jax.kb.candidates); point data/kb at your files, or run it
  # separately and leave W/candidates in place.
  config.candidates = candidates.default_config()
  config.candidates.data.format = "auto"
  config.curation = section.default_config("openai")  # Its options: backends/openai.py.
  config.curation.mode = arg.mode
  config.curation.concurrency = 32
  config.curation.openai.base_url = arg.base_url
  config.curation.openai.model = arg.model
  config.beam = beam_options.default_config()  # --runner direct|dask|dataflow
  return config
