"""The demo: the whole method on the embedded default world, on a laptop CPU.

Run it (the README's first command does exactly this):

  python -m rew_jax demo --workdir runs/demo
  ./launch/local.sh demo

Variants: `--config configs/demo.py:small` shrinks the world (for a quick look or tests);
any key can be overridden, e.g. `--config.world.num_web_images=2000`.
"""

from rew_jax import config as config_lib
from rew_jax.data import synthetic


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, small=False, seed=0)
  config = config_lib.ConfigDict()
  config.seed = arg.seed
  config.world = synthetic.default_config()
  config.world.seed = arg.seed
  if arg.small:
    config.world.num_entities = 60
    config.world.num_web_images = 300
    config.world.oven = config_lib.ConfigDict(dict(
        entity_train=50, entity_val=40, entity_test=40, query_train=20, query_val=20,
        query_test=20))
    config.world.contact_sheet = False
  return config
