"""LLM curation with a local Gemma 3 in JAX (`pip install 'rew_jax[gemma]'`; weights local).

  python -m rew_jax curate --config configs/curate_gemma.py:ckpt=/models/gemma3-4b-it,tokenizer=/models/tokenizer.model \
      --workdir W --config.curation.candidates_dir=W/candidates \
      --config.curation.kb_source=/data/Wiki6M_ver_1_0.jsonl.gz

`curation.concurrency` should be at least `gemma.batch_size`: concurrent records are sampled
together in batches. The sampler has no constrained decoding; replies are parsed tolerantly.
"""

from rew_jax import config as config_lib
from rew_jax.curation import section
from rew_jax.kb import candidates


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, ckpt="", tokenizer="", model="Gemma3_4B", mode="one_call")
  config = config_lib.ConfigDict()
  # The candidates step (rew_jax.kb.candidates); point data/kb at your files, or run it
  # separately and leave W/candidates in place.
  config.candidates = candidates.default_config()
  config.candidates.data.format = "auto"
  config.curation = section.default_config("gemma")  # Its options: backends/gemma.py.
  config.curation.mode = arg.mode
  config.curation.concurrency = 16
  config.curation.timeout_s = 600.0
  config.curation.gemma.model = arg.model
  config.curation.gemma.checkpoint_dir = arg.ckpt
  config.curation.gemma.tokenizer_path = arg.tokenizer
  return config
