"""OVEN fine-tuning from a pretraining checkpoint (GER-ALD's second stage).

  python -m rew_jax records from-oven --references OVEN/oven_entity_train.jsonl \
      OVEN/oven_query_train.jsonl --image-dir OVEN/images --out W/oven_train_records
  python -m rew_jax train --config configs/oven_finetune.py:kb_dir=W/kb --workdir W/finetune \
      --config.train.init_from=gs://BUCKET/rew_gitl \
      --config.train.input.data_dir=W/oven_train_records
  python -m rew_jax eval --config configs/oven_finetune.py:kb_dir=W/kb --workdir W/finetune \
      --step best

GER-ALD's fine-tuning (scenic/projects/gerald/configs/gerald_finetuning_config.py): batch
256, AdamW at lr 3e-7 for every parameter (no decoder multiplier), no weight decay, no
gradient clipping, label smoothing 0.1, 250 warmup steps then a cosine that would reach
zero at 30k steps, stopped at 8.5k. Evaluated on the OVEN validation splits every 500 steps
with KB-constrained beam search (beam 4); the checkpoint with the best final (query/entity)
harmonic mean is kept beside the 3 newest, and `eval --step best` (above) evaluates it
(`--step N` another, none the latest). Resize + centre crop at evaluation.

Decoding: GER-ALD's codes by default (`target=ald`: beam search, then code → entity), or
names under the KB's name trie (`target=name`). The `eval` command runs the validation
evaluator and `oven_test`, which predicts OVEN's test splits (their references carry no
labels) and writes W/finetune/eval/oven_test/step_<N>/predictions_{entity,query}.jsonl in
the official format, the files to submit; it never runs during training, so selection sees
validation only.

Variants: `variant=L/14` (must match the checkpoint), `mesh=fsdp|hybrid|tp`, `oven_dir=DIR`
(where the OVEN files and images/ are; default ./OVEN), `target=ald|name` (the pretraining's
entity target: GER-ALD codes or names), `kb_dir=DIR` (the KB index: its ald_codes.npz,
code_trie.npz, name_trie.npz), `decode=lookup|trie` (ALD codes: GER-ALD's unconstrained beam
search then code → entity lookup, or beam search constrained to the KB's codes; names are
always decoded under the name trie), `early_stop=N` (opt-in: also stop when the validation
HM has not improved for N evaluations; 0, the default, trains the 8.5k steps),
`image_tars=GLOB` (the released image tar shards, e.g. OVEN/shard*.tar, read in place instead
of OVEN/images), `image_mapping=CSV` (the released ovenid2impath.csv: where each image id
lies under OVEN/images or in the tars), `runlocal` (a
tiny model, 3 steps, evaluated on 8 validation examples and the whole test split: a CPU
smoke test; needs train.input.data_dir).
"""

import os

from rew_jax import config as config_lib
from rew_jax.evaluators import oven

_HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, variant="L/14", mesh="fsdp", runlocal=False,
                             oven_dir="OVEN", target="ald", kb_dir="", decode="lookup",
                             early_stop=0, image_tars="", image_mapping="")
  base = (f"{os.path.join(_HERE, 'git_large_rew.py')}:variant={arg.variant},mesh={arg.mesh},"
          f"target={arg.target}" + (f",kb_dir={arg.kb_dir}" if arg.kb_dir else ""))
  c = config_lib.load_config(base + (",runlocal" if arg.runlocal else "")).train
  c.input.tasks.weights = dict(entity=1.0, rationale=0.0, qa=0.0, caption=0.0)
  # Each value below is gerald_finetuning_config.py's (scenic/projects/gerald/configs/).
  c.input.batch_size = 8 if arg.runlocal else 256       # config.batch_size = 256
  c.loss.label_smoothing = 0.1                          # config.model.label_smooth = 0.1
  c.optim.update(dict(
      lr=3e-7,                                  # lr_configs.base_learning_rate = 3e-7
      # No decoder_multiplier (the pretraining config's 10 is absent): scenic's trainer
      # then builds the plain optimizer, one rate for every parameter.
      lr_mults=((".*", 1.0),),
      weight_decay=0.0,                         # optimizer.weight_decay = 0.0
      grad_clip_norm=0.0,                       # the optimizer config names no clip
      schedule="cosine",                        # 'constant * cosine_decay * linear_warmup'
      warmup_steps=0 if arg.runlocal else 250,  # lr_configs.warmup_steps = 250
      # steps_per_cycle = num_training_steps = 30000: scenic's cosine reaches 0 at step
      # 30k; the run stops before (config.early_stopping = 8500 replaces the step count).
      schedule_steps=0 if arg.runlocal else 30_000))
  if not arg.runlocal:
    c.total_steps = 8_500                        # config.early_stopping = 8500
    c.log_every = 50                             # config.log_summary_steps = 50
    c.checkpoint.every = 500                     # checkpoint_steps = log_eval_steps = 500
  c.init_from = ""  # The pretraining workdir: --config.train.init_from=...
  # The entity → KB row decoding (rew_jax/models/git_predict.py), every way giving KB rows.
  kb = (lambda name: f"{arg.kb_dir}/{name}" if arg.kb_dir else "")
  if arg.target == "ald":
    preds = {"lookup": "ald_rows", "trie": "ald_trie_rows"}
    if arg.decode not in preds:
      raise config_lib.ConfigError(f"decode={arg.decode!r}: use lookup or trie")
    pred = preds[arg.decode]
    c.predict = config_lib.ConfigDict(dict(code_trie=kb("code_trie.npz"), code_len=4,
                                           num_beams=4, alpha=0.6))
  else:
    pred = "decode_rows"
    c.predict = config_lib.ConfigDict(dict(name_trie=kb("name_trie.npz"), num_beams=4,
                                           alpha=0.6))
  c.evals = config_lib.ConfigDict()
  c.evals.oven_val = config_lib.ConfigDict(dict(
      type="oven", pred=pred, every=500,  # config.log_eval_steps = 500
      references=(os.path.join(arg.oven_dir, "oven_entity_val.jsonl"),
                  os.path.join(arg.oven_dir, "oven_query_val.jsonl")),
      image_dir="" if arg.image_tars else os.path.join(arg.oven_dir, "images"),
      image_tars=arg.image_tars, image_mapping=arg.image_mapping,
      mapping=config_lib.ConfigDict(dict(mode="rows", kb_dir=arg.kb_dir)),
      pp=oven.DEFAULT_PP, batch_size=256, max_examples=0))
  # The test splits (no labels in OVEN: predicted, written as the submission files, scored
  # only where labels exist). every=0: never during training, so never for selection; the
  # `eval` command runs it on the kept checkpoint.
  c.evals.oven_test = config_lib.ConfigDict(dict(c.evals.oven_val))
  c.evals.oven_test.update(dict(
      every=0, references=(os.path.join(arg.oven_dir, "oven_entity_test.jsonl"),
                           os.path.join(arg.oven_dir, "oven_query_test.jsonl"))))
  if arg.runlocal:  # The runlocal model's image and prompt sizes; a few examples, 2 beams.
    for name in ("oven_val", "oven_test"):
      c.evals[name].update(dict(
          batch_size=8, max_examples=8,
          pp=("decode|resize_crop(32)|normalize('clip')|"
              "tokenize(key='prompt', bos=True, max_len=8)|pad(8, key='prompt')")))
    c.evals.oven_val.every = 3
    c.evals.oven_test.max_examples = 0  # The whole test split: its files cover both tasks.
    c.predict.num_beams = 2
  # The best validation step is kept (outside checkpoint.keep's rotation); stopping on it
  # is opt-in (`early_stop=N`): GER-ALD's 8.5k is a fixed step count.
  c.early_stopping = config_lib.ConfigDict(dict(metric="oven_val/final_score",
                                                patience=int(arg.early_stop), mode="max"))
  if arg.runlocal:  # Its 8 examples may miss a split, and then final_score is not reported:
    #                 the smoke test selects on a metric every evaluation reports.
    c.early_stopping.update(dict(metric="oven_val/no_entity_frac", mode="min"))
  return config_lib.ConfigDict(dict(train=c))
