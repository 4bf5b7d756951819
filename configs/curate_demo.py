"""LLM curation on the embedded world with the `simulated` backend (no network, no weights).

  python -m rew_jax curate --config configs/curate_demo.py --workdir runs/curate_demo

Generates the world (when missing), the candidates, then REW records in W/records and the
report in W/curation/report.md (entity-label accuracy next to the top-1 candidates').
Variants (`:arg`): `runlocal` (a small world: 60 entities, 300 images),
`backend=top1_candidate` (the Entity-WebLI baseline, no LLM), `mode=multi_call` or
`mode=direct` (the ablation), `retrieval=bm25` (lexical candidates instead of MiniLM).
The simulated LLM's reply-format faults: `--config.curation.simulated.malformed=0.1` etc.
"""

from rew_jax import config as config_lib
from rew_jax.curation import beam_options
from rew_jax.curation import run
from rew_jax.kb import candidates
from rew_jax.data import synthetic


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, seed=0, backend="simulated", mode="one_call",
                             retrieval="embedding")
  config = config_lib.ConfigDict()
  config.world = synthetic.default_config()
  config.world.seed = arg.seed
  if arg.runlocal:
    config.world.num_entities = 60
    config.world.num_web_images = 300
    config.world.oven = config_lib.ConfigDict(dict(
        entity_train=20, entity_val=20, entity_test=20, query_train=10, query_val=10,
        query_test=10))
    config.world.contact_sheet = False
  config.candidates = candidates.default_config()  # The Entity-WebLI step on the world.
  config.candidates.retrieval.method = arg.retrieval
  config.candidates.retrieval.k = 10
  config.candidates.data.records_per_shard = 1000
  config.curation = run.default_config()
  config.curation.backend = arg.backend
  config.curation.mode = arg.mode
  config.curation.concurrency = 4
  config.curation.backoff_initial_s = 0.01
  # The simulated LLM perceives the image; only the form of its replies is seeded.
  # kb_path: the Wiki6M file it knows ("": the curation's KB, the world's; "none": none, and
  # it names entities outside the candidates by the world's naming convention).
  config.curation.simulated = config_lib.ConfigDict(dict(
      seed=arg.seed, kb_path="", malformed=0.04, refusal=0.01, latency_s=0.0))
  config.beam = beam_options.default_config()  # --runner direct|dask|dataflow
  return config
