"""The demo: the whole method on the embedded default world, on a laptop CPU.

Run it (the README's first command does exactly this):

  python -m rew_jax demo --workdir runs/demo
  ./launch/local.sh demo

world → candidates (Entity-WebLI: MiniLM retrieval of each caption against the KB) →
curation (the simulated LLM, and the no-LLM top-1-candidate baseline) → REW records →
pretrain one tiny GiT on each → OVEN entity and query validation with KB-constrained
decoding → fine-tune both on the world's OVEN train splits → validation again → a report
comparing both, every figure with its 95 % interval.

Variants (`:arg`): `runlocal` (a small world and a few steps: a smoke test of every stage),
`steps=N` (pretraining), `finetune_steps=N` (0: no fine-tuning), `seed=S` (the world and
the first training seed), `seeds=N` (train every model with seeds S..S+N-1: mean ± std).
`ablation=` picks the models compared (`demo.arms`), each with its paired difference from
`demo.reference`:

  (none)   the paper's Table 1: Entity-WebLI (top-1 candidate) vs REW, before and after
           fine-tuning on OVEN train
  table4   the paper's Table 4, how to use the LLM: direct annotation, correction without
           context, with context, and in separate calls; each curates its own records and
           trains the same entity-only model on them (pretraining only unless
           finetune_steps=N)
  table5   the paper's Table 5, what to train on: entity, entity + rationale, entity +
           rationale + QA, on the same REW records (pretraining only unless finetune_steps=N)

  python -m rew_jax demo --workdir runs/table4 --config configs/demo.py:ablation=table4

Any key can be overridden, e.g. `--config.train.input.batch_size=32`.
Sections: world, candidates, curation (each read by its stage as well), train (the template
of every model), eval (the OVEN validation all get), demo (the arms and what differs).
"""

import os

from rew_jax import config as config_lib
from rew_jax import optim
from rew_jax.data import pipeline
from rew_jax.data import synthetic
from rew_jax.data import tasks
from rew_jax.data import tokenizers

_HERE = os.path.dirname(os.path.abspath(__file__))

IMAGE_SIZE = 48
PROMPT_LEN = 10
TARGET_LEN = 8


def _pp(train: bool) -> str:
  del train  # The world's nuisance already varies position, scale and rotation; flipping
  #            would break the query split's "on the left" questions.
  return (f"decode|resize({IMAGE_SIZE})|normalize('clip')|"
          f"tokenize(key='prompt', bos=True)|pad({PROMPT_LEN}, key='prompt')|"
          f"tokenize(key='target', eos=True)|"
          f"pad({TARGET_LEN}, key='target', keep_eos={tokenizers.BERT_EOS_ID})")


def train_config(steps: int, seed: int) -> config_lib.ConfigDict:
  """The training block shared by both demo models (the data differs)."""
  c = config_lib.ConfigDict()
  c.seed = seed
  c.total_steps = steps
  c.log_every = max(1, min(25, steps // 4))
  c.model = config_lib.ConfigDict(dict(
      name="git", variant="mu/8", image_size=IMAGE_SIZE,
      vit=dict(width=128, depth=4, num_heads=4, mlp_dim=256, activation="gelu"),
      # The output layer scales with the vocabulary: a narrow decoder keeps it cheap.
      decoder=dict(num_layers=2, hidden_size=96, num_heads=4, mlp_dim=192, dropout=0.1),
      max_prompt_len=PROMPT_LEN, max_target_len=TARGET_LEN))
  c.input = pipeline.default_config()
  c.input.data_dir = ""        # Set by the demo: the baseline's or the REW records.
  c.input.batch_size = 32
  c.input.seed = seed
  c.input.num_threads = 2
  c.input.pp = _pp(train=True)
  c.input.tasks.weights = dict(entity=1.0, rationale=0.0, qa=0.0, caption=0.0)
  # Web records carry no question: the entity task asks a generic one, drawn from GER-ALD's
  # and from OVEN's templates (the category at random, since a web record names none), so
  # that the pretrained model has met the question forms OVEN validation asks.
  c.input.tasks.entity.generic_questions = tasks.GENERIC_QUESTIONS + tuple(
      q.format(cat=cat) for q in synthetic.ENTITY_QUESTIONS for cat in synthetic.CATEGORIES)
  c.optim = optim.default_config()
  # GER-ALD's rates: the image encoder at `lr`, the projection and decoder at 10×. From
  # scratch this ratio decides whether the model sees at all: with one rate for all, the
  # decoder learns the names' language prior first and the ViT, learning as fast, silences
  # its then-useless tokens by collapsing to one constant output. Measured on the demo world,
  # the first name word's (the colour's) loss with real images against shuffled ones: one
  # rate, 600 steps: 2.06 against 2.41 nats (chance 2.30); these rates, 300 steps: 0.83
  # against 4.12.
  # The demo clips the global gradient norm at 1 (GER-ALD does not clip): its figures in
  # docs/training.md were measured with this clip.
  c.optim.update(dict(lr=2e-4, warmup_steps=max(1, steps // 10), weight_decay=1e-4,
                      grad_clip_norm=1.0))
  # No label smoothing: on a 30522-word vocabulary it puts a floor of ~1.4 nats under a
  # tiny model's loss, above which it learns the name prior before it learns to see.
  c.loss = config_lib.ConfigDict(dict(label_smoothing=0.0))
  c.mesh = config_lib.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.sharding_rules = None
  c.checkpoint = config_lib.ConfigDict(dict(every=max(steps, 1), keep=1, async_save=True))
  return c


ENTITY = dict(entity=1.0, rationale=0.0, qa=0.0, caption=0.0)
ENTITY_RATIONALE = dict(entity=1.0, rationale=0.25, qa=0.0, caption=0.0)
ALL_TASKS = dict(entity=1.0, rationale=0.25, qa=0.25, caption=0.0)


def _arm(records, tasks, backend="", mode="", context=""):
  """One model of the demo: the records it trains on (W/records_<records>, curated with
  `backend`, `mode`, `context`; "" the curation section's) and its task weights."""
  return config_lib.ConfigDict(dict(records=records, backend=backend, mode=mode,
                                    context=context, tasks=config_lib.ConfigDict(tasks)))


def arms(ablation: str) -> tuple[dict, tuple[str, ...], str]:
  """(the arms of `ablation`, their report order, the reference arm)."""
  if ablation == "":
    # REW adds the curated rationale and QA tasks (the paper's multi-task recipe).
    models = dict(entity_webli=_arm("entity_webli", ENTITY, backend="top1_candidate"),
                  rew=_arm("rew", ALL_TASKS))
    reference = "entity_webli"
  elif ablation == "table4":  # The labels differ, nothing else: entity-only models.
    models = dict(direct=_arm("direct", ENTITY, mode="direct"),
                  no_context=_arm("no_context", ENTITY, mode="one_call", context="none"),
                  context=_arm("rew", ENTITY, mode="one_call", context="full"),
                  separate=_arm("separate", ENTITY, mode="multi_call", context="full"))
    reference = "direct"
  elif ablation == "table5":  # The records are the same, the tasks differ.
    models = dict(entity=_arm("rew", ENTITY), entity_rationale=_arm("rew", ENTITY_RATIONALE),
                  all=_arm("rew", ALL_TASKS))
    reference = "entity"
  else:
    raise ValueError(f"configs/demo.py: ablation must be '', 'table4' or 'table5', got "
                     f"{ablation!r}")
  return models, tuple(models), reference


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, steps=1000, seed=0, seeds=1,
                             finetune_steps=-1, ablation="")
  if arg.finetune_steps < 0:  # The main demo fine-tunes; the ablations compare pretraining.
    arg.finetune_steps = 0 if arg.ablation else 100
  base = f"{os.path.join(_HERE, 'curate_demo.py')}:seed={arg.seed}"
  config = config_lib.load_config(base + (",runlocal" if arg.runlocal else ""))
  if not arg.runlocal:
    # A world a tiny GiT trained from scratch learns to see in a few CPU minutes: 60
    # entities (48 seen), 3000 web images (the default world's 300 entities need far more
    # steps than the demo's budget before the model starts using the image at all).
    config.world.num_entities = 60
    config.world.num_web_images = 3000
    # A milder long tail than the default world's (s = 1): measured at s = 1 and 700 steps,
    # the REW model got 37.5 % seen / 8.5 % unseen entity top-1 before fine-tuning, the
    # tail's few images too few for the budget; at s = 0.6 and 1000 steps 48.5 / 38.5 (the
    # rarest entity still has ~1/12 of the first's images, unseen ones are the rarer).
    config.world.zipf_exponent = 0.6
  steps = 3 if arg.runlocal else arg.steps
  config.train = train_config(steps, arg.seed)
  # Every pretrained model is then fine-tuned on the world's OVEN entity and query train
  # splits (the paper's Table 1: before and after fine-tuning); `seeds` repeats the training.
  models, order, reference = arms(arg.ablation)
  config.demo = config_lib.ConfigDict(dict(
      arms=config_lib.ConfigDict(models), order=order, reference=reference,
      seeds=arg.seeds,
      # Both models embed and predict only the token ids the world's texts use (~1 k of
      # BERT's 30 522; rew_jax/data/vocab.py): the full output layer was a third of a step.
      trim_vocab=True,
      # JAX's persistent compilation cache in W/jax_cache: the second model and the
      # evaluations reuse the first one's compiled programs (~15 s each on 2 cores).
      compilation_cache=True,
      # GER-ALD fine-tunes on OVEN at 1/33 of its pretraining rate (3e-7 after 1e-5): OVEN
      # train holds only the seen entities, and a high rate forgets the unseen ones (measured
      # on the demo, REW unseen top-1 after fine-tuning: 10.0 % at 2e-5, 28.5 % at 5e-6).
      finetune=config_lib.ConfigDict(dict(
          total_steps=min(2, arg.finetune_steps) if arg.runlocal else arg.finetune_steps,
          lr=5e-6, warmup_steps=10))))
  config.eval = config_lib.ConfigDict(dict(
      splits=("entity_val", "query_val"),  # oven_<split>.jsonl of the world.
      batch_size=64, num_beams=4, max_examples=0,
      pp=(f"decode|resize({IMAGE_SIZE})|normalize('clip')|"
          f"tokenize(key='prompt', bos=True, max_len={PROMPT_LEN})|pad({PROMPT_LEN}, key='prompt')")))
  if arg.runlocal:
    config.train.input.batch_size = 16
    config.eval.batch_size = 16
    config.eval.max_examples = 16
    config.eval.num_beams = 2
  return config
