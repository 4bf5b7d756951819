"""LLM curation on the embedded world with the `simulated` backend (no network, no weights).

  python -m rew_jax curate --config configs/curate_demo.py --workdir runs/curate_demo

Generates the world (when missing), the candidates, then REW records in W/records and the
report in W/curation/report.md (entity-label accuracy next to the top-1 candidates').
Variants (`:arg`): `runlocal` (a small world: 60 entities, 300 images),
`backend=top1_candidate` (the Entity-WebLI baseline, no LLM), `retrieval=bm25` (lexical
candidates instead of MiniLM), `dedup` (leave out web images that are near-copies of the
world's OVEN validation and test images, counted in the report; off by default so that the
demo's figures stay those measured without it), and the paper's curation ablations (its
Table 4):

  mode=direct                  direct annotation: the image alone, no caption, no candidates
  mode=one_call,context=none   correction without context: candidate names only
  mode=one_call,context=full   correction with context: + caption + Wikipedia summaries
                               (the default; context=caption or summaries: one of the two)
  mode=multi_call              the same in separate calls (verify, then rationale, then QA)

With `--config.curation.out_dir=W/records_<variant>` each writes its records beside the
others (the world and candidates are shared) and its report, with the label accuracy
against the world's truth, to `<out_dir>_curation/report.md`; docs/curation.md lists the
commands and the measured figures.
The simulated LLM's reply-format faults: `--config.curation.simulated.malformed=0.1` etc.
"""

from rew_jax import config as config_lib
from rew_jax.curation import beam_options
from rew_jax.curation import dedup
from rew_jax.curation import section
from rew_jax.kb import candidates
from rew_jax.data import synthetic


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, seed=0, backend="simulated", mode="one_call",
                             context="", retrieval="embedding", dedup=False)
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
  # The simulated LLM's options are kept beside any backend (the demo's baseline runs this
  # config with backend=top1_candidate).
  config.curation = section.default_config("simulated")
  config.curation.backend = arg.backend
  config.curation.mode = arg.mode
  config.curation.context = arg.context  # "": the mode's own (full; none for direct).
  config.curation.concurrency = 4
  if arg.dedup:  # Paths under the image root, the world directory (W/world).
    config.curation.dedup.update(dedup.oven_eval("oven"))
    config.curation.dedup.reference_image_dir = "images"
  config.curation.backoff_initial_s = 0.01
  # The simulated LLM perceives the image; only the form of its replies is seeded.
  # kb_path: the Wiki6M file it knows ("": the curation's KB, the world's; "none": none, and
  # it names entities outside the candidates by the world's naming convention).
  config.curation.simulated.seed = arg.seed
  config.beam = beam_options.default_config()  # --runner direct|dask|dataflow
  return config
