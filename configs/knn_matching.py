"""Visual matching (the paper's Table 3): kNN over frozen image features (DINOv2-L/14 or CLIP
ViT-L/14's projected embedding), the memory of web images labelled by Entity-WebLI's
candidate entity or by REW's curated entity.

  python -m rew_jax eval --config configs/knn_matching.py:features=dinov2,labels=rew --workdir W
  python -m rew_jax eval --config configs/knn_matching.py:features=dinov2,labels=entity_webli \
      --workdir W
  python -m rew_jax eval --config configs/knn_matching.py:features=clip,queries=flowers102 \
      --workdir W

W is the curation workdir: its records (W/records, what `curate` wrote: each record holds
its candidates and its curated entity) are the memory, its KB index (W/kb) maps the classes
of a fine-grained query set to entities (class maps under W/eval/knn/class_maps/, to be
checked and corrected by hand), and the results go to W/eval/knn/step_0/. Nothing is
trained: `total_steps=0` evaluates the weights `init_from` loads.

Variants:
  features  dinov2 (HF Dinov2Model folder, `dinov2=DIR`, default weights/dinov2-large)
            | clip (HF CLIPModel folder, `clip=DIR`, default weights/clip-vit-large-patch14)
  labels    rew (curated) | entity_webli (candidate top-1) | both (and their gain; default)
  queries   oven (OVEN's entity and query validation files, `oven_dir=DIR`, default ./OVEN)
            | flowers102 | sun397 | food101 (TFDS, `data_dir=DIR`) | aircraft | sports100
            (on disk, `root=DIR`: class folders or a CSV, see evaluators/finegrained.py)
  k         neighbours (default 10)
  runlocal  tiny feature models of the test's shapes (32 px, width 32), a few queries
"""

import os

from rew_jax import config as config_lib
from rew_jax.models import clip_image
from rew_jax.models import dinov2

LABELS = {"rew": ("curated",), "entity_webli": ("candidate",), "both": ("candidate", "curated")}
QUERIES = ("oven", "flowers102", "sun397", "food101", "aircraft", "sports100")
# Normalisation each model was trained with.
PP = {"dinov2": "decode|resize_crop({size})|normalize('imagenet')",
      "clip": "decode|resize_crop({size})|normalize('clip')"}


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, features="dinov2", labels="both", queries="oven",
                             clip="weights/clip-vit-large-patch14", dinov2="weights/dinov2-large",
                             oven_dir="OVEN", data_dir="", root="", k=10, runlocal=False)
  if arg.features not in PP:
    raise config_lib.ConfigError(f"features={arg.features!r}: use dinov2 or clip")
  if arg.labels not in LABELS:
    raise config_lib.ConfigError(f"labels={arg.labels!r}: use one of {', '.join(LABELS)}")
  if arg.queries not in QUERIES:
    raise config_lib.ConfigError(f"queries={arg.queries!r}: use one of {', '.join(QUERIES)}")
  c = config_lib.ConfigDict()
  c.seed = 0
  c.total_steps = 0  # A frozen feature model: evaluated as loaded.
  size = 224
  if arg.features == "dinov2":
    c.model = dinov2.default_config()
    c.init_from = f"hf_dinov2:{arg.dinov2}"
  else:
    c.model = clip_image.default_config()
    c.init_from = f"hf_clip:{arg.clip}"
  c.mesh = config_lib.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.sharding_rules = None

  knn = dict(type="knn_matching", pred="embed", memory_records="",
             labellings=LABELS[arg.labels], k=arg.k, weighting="uniform",
             batch_size=128, max_examples=0)
  if arg.queries == "oven":
    knn.update(query_references=(os.path.join(arg.oven_dir, "oven_entity_val.jsonl"),
                                 os.path.join(arg.oven_dir, "oven_query_val.jsonl")),
               image_dir=os.path.join(arg.oven_dir, "images"))
  else:
    knn.update(query_set=arg.queries, data_dir=arg.data_dir or None, query_root=arg.root,
               kb_dir="")
  if arg.runlocal:
    size = 32
    knn.update(batch_size=8, max_examples=8, k=min(arg.k, 3))
    if arg.features == "dinov2":
      c.model.update(dict(width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=8,
                          image_size=32))
    else:
      c.model.update(dict(variant="mu/8", image_size=32, projection_dim=16))
      c.model.vit = config_lib.ConfigDict(dict(width=32, depth=1, num_heads=2, mlp_dim=64))
  knn["pp"] = PP[arg.features].format(size=size)
  c.evals = config_lib.ConfigDict(dict(knn=knn))
  return config_lib.ConfigDict(dict(train=c))
