"""Zero-shot fine-grained transfer (the paper's Table 2): a pretrained GiT answers each image
of Flowers102, SUN397, Food101, FGVC-Aircraft and Sports100 with a KB entity, decoding
restricted to the entities the set's classes map to; top-1 per set and their mean.

  python -m rew_jax eval --config configs/zeroshot.py:dataset=flowers102 --workdir W
  python -m rew_jax eval --config configs/zeroshot.py:dataset=all,root_aircraft=FGVC,root_sports100=SPORTS \
      --workdir W

W is the pretraining run (configs/git_large_rew.py; its latest checkpoint, or --step N);
its variant must be given again (`variant=`). Classes are mapped to entities of the KB
index (`kb=DIR`, default ./kb: the curation workdir's W/kb) by the name resolver, in class
maps written under W/eval/zeroshot/class_maps/<set>.jsonl: check them, correct a row by hand
(its entity_id, and "source": "manual"), and rerun; corrections are kept. Unmapped classes
are listed in each set's metrics.json and their images count as errors.

Variants:
  dataset   flowers102 | sun397 | food101 (TFDS, prepared under `data_dir=DIR`) | aircraft
            | sports100 (on disk: `root_aircraft=DIR`, `root_sports100=DIR`, class folders
            or a CSV, see rew_jax/evaluators/finegrained.py) | all (the five, and the mean)
  mode      trie (constrained beam search over the entities' names; default) | likelihood
            (each entity's name scored by the model)
  variant   L/14 (must match the checkpoint), runlocal (the runlocal model of
            git_large_rew.py, a few examples, 32 px)
  target    the recipe's entity target, as the checkpoint was trained: ald (ALD codes from
            KB/ald_codes.npz; the recipe's default) | name
The answer space follows the recipe's entity target: entity names, or their ALD codes for
a model trained on codes (`entity_target` of the evaluator, from the recipe's
`input.tasks.entity.target`).
"""

import os

from rew_jax import config as config_lib
from rew_jax.data import tasks
from rew_jax.evaluators import finegrained

_HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, dataset="flowers102", mode="trie", variant="L/14",
                             kb="kb", data_dir="", root_aircraft="", root_sports100="",
                             target="", runlocal=False)
  names = finegrained.SETS if arg.dataset == "all" else (arg.dataset,)
  if any(n not in finegrained.SETS for n in names):
    raise config_lib.ConfigError(f"dataset={arg.dataset!r}: use all or one of "
                                 f"{', '.join(finegrained.SETS)}")
  base = (f"{os.path.join(_HERE, 'git_large_rew.py')}:variant={arg.variant},clip=none,"
          f"kb_dir={arg.kb}")
  base += f",target={arg.target}" if arg.target else ""
  c = config_lib.load_config(base + (",runlocal" if arg.runlocal else "")).train
  c.init_from = "none"  # Evaluation reads the checkpoint of W.
  c.predict = config_lib.ConfigDict(dict(num_beams=4, alpha=0.6))
  size, prompt_len = (32, 8) if arg.runlocal else (224, 20)
  c.evals = config_lib.ConfigDict(dict(zeroshot=dict(
      type="zeroshot", pred="class_rows" if arg.mode == "trie" else "class_likelihood",
      mode=arg.mode, datasets=",".join(names), data_dir=arg.data_dir or None,
      roots=dict(aircraft=arg.root_aircraft, sports100=arg.root_sports100),
      kb_dir=arg.kb, entity_target=c.input.tasks.entity.target,
      prompt=tasks.GENERIC_QUESTIONS[0],
      pp=(f"decode|resize_crop({size})|normalize('clip')|"
          f"tokenize(key='prompt', bos=True, max_len={prompt_len})|pad({prompt_len}, key='prompt')"),
      batch_size=8 if arg.runlocal else 256, max_examples=8 if arg.runlocal else 0)))
  if arg.runlocal:
    c.predict.num_beams = 2
  return config_lib.ConfigDict(dict(train=c))
