"""A tiny training config (its `train` section) for the train-loop tests.

  python -m rew_jax train --config tests/tiny_train_config.py:data_dir=D,steps=4 --workdir W

`world=W2` adds an OVEN evaluator on the world and KB index of the workdir W2 (made by the
`world` and `candidates` stages), as the demo evaluates (rew_jax/stages/demo.py):

  python -m rew_jax eval --config tests/tiny_train_config.py:data_dir=D,world=W2 --workdir W

`knn=O` adds a kNN-matching evaluator (`pred=embed`) at the last step: the records of D are
its memory, O/oven_entity_val.jsonl and O/images its queries.
"""

from rew_jax import config as config_lib
from rew_jax import optim
from rew_jax import workdir as workdir_lib
from rew_jax.data import pipeline


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, data_dir="", steps=4, every=2, mesh="data", world="",
                             knn="")
  c = config_lib.ConfigDict()
  c.seed = 0
  c.total_steps = arg.steps
  c.log_every = 1
  c.model = config_lib.ConfigDict(dict(
      name="git", variant="mu/8", image_size=32,
      vit=dict(width=32, depth=1, num_heads=2, mlp_dim=64),
      decoder=dict(num_layers=1, hidden_size=32, num_heads=2, mlp_dim=64, dropout=0.1),
      max_prompt_len=8, max_target_len=8))
  c.input = pipeline.default_config()
  c.input.data_dir = arg.data_dir
  c.input.batch_size = 8
  c.input.num_threads = 1
  c.input.pp = ("decode|inception_crop(32, area_min=50)|normalize('clip')|"
                "tokenize(key='prompt', bos=True)|pad(8, key='prompt')|"
                "tokenize(key='target', eos=True)|pad(8, key='target', keep_eos=102)")
  c.optim = optim.default_config()
  c.optim.update(dict(lr=3e-3, warmup_steps=1, lr_mults=((".*", 1.0),)))
  c.loss = config_lib.ConfigDict(dict(label_smoothing=0.1))
  # hybrid: all devices on `data`, laid out host by host (rew_jax/sharding.py).
  sizes = {"data": dict(data=-1, fsdp=1, tensor=1), "3d": dict(data=2, fsdp=2, tensor=2),
           "hybrid": dict(data=-1, fsdp=1, tensor=1, dcn=dict(data=-1))}
  c.mesh = config_lib.ConfigDict(sizes[arg.mesh])
  c.sharding_rules = None
  c.checkpoint = config_lib.ConfigDict(dict(every=arg.every, keep=2, async_save=True))
  evals = {}
  if arg.world:
    wd = workdir_lib.Workdir(arg.world)
    evals["oven"] = dict(
        type="oven", pred="decode_rows", every=arg.steps,
        references=[wd.world_oven("entity_val"), wd.world_oven("query_val")],
        image_dir=wd.world_images, mapping=dict(mode="rows", kb_dir=wd.kb_index),
        pp=("decode|resize(32)|normalize('clip')|tokenize(key='prompt', bos=True, max_len=8)|"
            "pad(8, key='prompt')"), batch_size=8)
    c.predict = config_lib.ConfigDict(dict(name_trie=wd.kb_file("name_trie.npz"), num_beams=2))
  if arg.knn:
    evals["knn"] = dict(
        type="knn_matching", pred="embed", memory_records=arg.data_dir,
        query_references=f"{arg.knn}/oven_entity_val.jsonl", image_dir=f"{arg.knn}/images",
        k=3, batch_size=8, pp="decode|resize_crop(32)|normalize('clip')")
  if evals:
    c.evals = config_lib.ConfigDict(evals)
  return config_lib.ConfigDict(dict(train=c))
