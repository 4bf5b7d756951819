"""GiT-Large pretraining on REW records: the paper's main recipe (GER-ALD's optimisation).

  python -m rew_jax train --config configs/git_large_rew.py:kb_dir=gs://BUCKET/rew/kb \
      --workdir gs://BUCKET/rew_gitl --config.train.input.data_dir=gs://BUCKET/rew/records
  ./launch/tpu_vm.sh all --tpu-name rew --accelerator-type v4-128 \
      --config configs/git_large_rew.py:kb_dir=gs://BUCKET/rew/kb \
      --workdir gs://BUCKET/rew_gitl   # see docs/launching.md

ViT-L/14 at 224 px + 6-layer GIT decoder (≈0.39B parameters), batch 4096, 600k steps, AdamW
(no weight decay), base lr 1e-5 with everything after the image encoder at ×10, 250 warmup
steps then cosine, no gradient clipping, label smoothing 0.3, inception crop (≥ 8 % area) at 224 px, targets of
32 tokens (rationales 64; longer ones are cut and counted, never silently); entity-only
records are asked one of a few generic questions ("what is the main object?"). The entity
task's target is the entity's GER-ALD code (`target=ald`, read from the KB build's
KB_DIR/ald_codes.npz) or its name (`target=name`); the fine-tuning stage must use the same.
The image encoder starts from CLIP ViT-L/14, as in the paper: `init_from="hf_clip:DIR"` with
DIR a local Hugging Face CLIP folder (config.json + model.safetensors of
openai/clip-vit-large-patch14, e.g. fetched once with `huggingface-cli download
openai/clip-vit-large-patch14 --local-dir weights/clip-vit-large-patch14`); the decoder
starts from its random initialisation. A missing folder stops the run with an error naming it.

Variants (`--config configs/git_large_rew.py:data=rew,tasks=all,variant=L/14,mesh=fsdp`):
  target   ald (GER-ALD codes, the paper's; needs kb_dir) | name (the entity name's tokens)
  kb_dir   the KB index directory of the records' entities (W/kb: ald_codes.npz, tries)
  data     rew (curated REW records) | entity_webli (top-1 candidate labels, the baseline)
           | captions (raw web captions: the WebLI-captions baseline, caption task only)
  tasks    entity | entity_rationale | all (entity + rationale + QA, the paper's best)
  variant  L/14 (GiT-Large) | B/16 | S/16 | Ti/16: the image encoder
  mesh     fsdp (all chips one FSDP axis: v4/v5p pods) | hybrid (data=2 × fsdp: two slices
           or GPU hosts) | tp (fsdp × tensor=4: tensor parallelism inside a host)
  clip     DIR of the HF CLIP folder (default weights/clip-vit-large-patch14; another variant
           needs the CLIP of its own shapes) | none (from scratch; the same as
           --config.train.init_from=none)
  runlocal a tiny model for 3 steps on CPU (smoke test of the recipe; needs train.input.data_dir);
           from scratch unless clip=DIR names a CLIP folder of the tiny model's shapes
"""

from rew_jax import config as config_lib
from rew_jax import optim
from rew_jax.data import code_table
from rew_jax.data import pipeline
from rew_jax.data import tokenizers
from rew_jax.models import git

TASKS = {
    "entity": dict(entity=1.0, rationale=0.0, qa=0.0, caption=0.0),
    "entity_rationale": dict(entity=1.0, rationale=0.5, qa=0.0, caption=0.0),
    "all": dict(entity=1.0, rationale=0.5, qa=0.5, caption=0.0),
}
DEFAULT_CLIP = "weights/clip-vit-large-patch14"
# Target lengths in tokens, EOS included: names (ALD codes need 5 at most) and QA answers
# are short, a rationale's 2–3 sentences are not; the batch is padded to the longest.
TARGET_LENS = dict(entity=32, rationale=64, qa=32, caption=32)
TARGET_LEN = max(TARGET_LENS.values())
MESHES = {
    "fsdp": dict(data=1, fsdp=-1, tensor=1),
    "hybrid": dict(data=2, fsdp=-1, tensor=1),
    "tp": dict(data=1, fsdp=-1, tensor=4),
}


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, data="rew", tasks="all", variant="L/14", mesh="fsdp",
                             target="ald", kb_dir="", runlocal=False, clip=DEFAULT_CLIP)
  if arg.data not in ("rew", "entity_webli", "captions"):
    raise config_lib.ConfigError(f"data={arg.data!r}: use rew, entity_webli or captions")
  c = config_lib.ConfigDict()
  c.seed = 0
  c.total_steps = 600_000
  c.log_every = 100

  c.model = git.default_config()
  c.model.variant = arg.variant
  c.model.max_prompt_len = 20
  c.model.max_target_len = TARGET_LEN
  c.model.dtype = "bfloat16"
  c.model.remat = True

  c.input = pipeline.default_config()
  c.input.data_dir = ""  # REW (or candidate) records: --config.train.input.data_dir=...
  c.input.batch_size = 4096
  c.input.num_workers = 8
  # A web-scale run meets undecodable records (corrupt image bytes) now and then: each is
  # masked out of its batch, logged with its shard and index, and counted in the `skipped`
  # column of metrics.jsonl instead of ending a 600k-step run.
  c.input.on_error = "skip"
  c.input.pp = ("decode_inception_crop(224, area_min=8, antialias=False)|normalize('clip')|"
                "tokenize(key='prompt', bos=True)|pad(20, key='prompt')|"
                "tokenize(key='target', eos=True)|"
                f"pad({TARGET_LEN}, key='target', keep_eos={tokenizers.BERT_EOS_ID})")
  # Each task's target length (EOS included); longer targets are cut there and counted in
  # the `truncated` columns of metrics.jsonl. A rationale is 2–3 sentences.
  for task, length in TARGET_LENS.items():
    c.input.tasks[task].target_len = length
  if arg.data == "captions":
    c.input.tasks.weights = dict(entity=0.0, rationale=0.0, qa=0.0, caption=1.0)
  elif arg.data == "entity_webli":
    c.input.tasks.weights = TASKS["entity"]  # Candidate records hold no rationale or QA.
  else:
    if arg.tasks not in TASKS:
      raise config_lib.ConfigError(f"tasks={arg.tasks!r}: use one of {sorted(TASKS)}")
    c.input.tasks.weights = TASKS[arg.tasks]

  if arg.target not in ("ald", "name"):
    raise config_lib.ConfigError(f"target={arg.target!r}: use ald or name")
  if arg.data != "captions":  # The captions baseline has no entity task.
    c.input.tasks.entity.target = arg.target
  if arg.target == "ald" and arg.data != "captions":
    # Without kb_dir, train fails at start, naming the missing codes file.
    c.input.tasks.entity.codes_path = f"{arg.kb_dir}/{code_table.FILE_NAME}" if arg.kb_dir else ""

  c.optim = optim.default_config()
  # scenic/projects/gerald/configs/gerald_pretraining_config.py: base_learning_rate 1e-5,
  # warmup_steps 250, 'constant * cosine_decay * linear_warmup' over num_training_steps,
  # adamw with weight_decay 0 (skip_scale_and_bias_regularization), decoder_multiplier 10;
  # no gradient clipping (grad_clip_norm 0).
  c.optim.update(dict(lr=1e-5, warmup_steps=250, schedule="cosine", weight_decay=0.0,
                      grad_clip_norm=0.0, lr_mults=(("encoder/.*", 1.0), (".*", 10.0))))
  c.loss = config_lib.ConfigDict(dict(label_smoothing=0.3))
  if arg.mesh not in MESHES:
    raise config_lib.ConfigError(f"mesh={arg.mesh!r}: use one of {sorted(MESHES)}")
  c.mesh = config_lib.ConfigDict(MESHES[arg.mesh])
  c.sharding_rules = None  # rew_jax.sharding.DEFAULT_RULES.
  c.checkpoint = config_lib.ConfigDict(dict(every=5000, keep=3, async_save=True))
  # CLIP's image encoder (paper, GER-ALD); "none": from scratch; a workdir or checkpoint
  # step directory: another run's parameters.
  c.init_from = "none" if arg.clip == "none" else f"hf_clip:{arg.clip}"

  if arg.runlocal:
    c.total_steps, c.log_every = 3, 1
    c.model.update(dict(variant="mu/8", image_size=32, dtype="float32", remat=False,
                        max_prompt_len=8, max_target_len=8))
    c.model.vit = config_lib.ConfigDict(dict(width=32, depth=1, num_heads=2, mlp_dim=64))
    c.model.decoder = config_lib.ConfigDict(dict(num_layers=1, hidden_size=32, num_heads=2,
                                                 mlp_dim=64))
    c.input.batch_size, c.input.num_workers, c.input.num_threads = 8, 0, 1
    c.input.pp = ("decode_inception_crop(32, area_min=8, antialias=False)|normalize('clip')|"
                  "tokenize(key='prompt', bos=True)|pad(8, key='prompt')|"
                  "tokenize(key='target', eos=True)|"
                  f"pad(8, key='target', keep_eos={tokenizers.BERT_EOS_ID})")
    c.mesh = config_lib.ConfigDict(dict(data=2, fsdp=2, tensor=2))
    c.checkpoint.every = 3
    if arg.clip == DEFAULT_CLIP:  # The tiny model cannot take ViT-L/14 weights.
      c.init_from = "none"
  return config_lib.ConfigDict(dict(train=c))
