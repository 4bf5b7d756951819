"""rew_jax: web-scale visual entity recognition with LLM-refined data, in JAX.

Stages (one folder each): `kb` (entity KB and candidate retrieval), `curation`
(LLM verify/correct + rationale + QA), `records` (the REW record contract), `data`
(tokenizers, preprocessing, Grain pipelines, the embedded synthetic world), `models`
(GiT encoder-decoder), `evaluators` (OVEN, zero-shot, kNN). Run `python -m rew_jax --help`;
from Python (docs/python_api.md):

    import rew_jax
    run = rew_jax.load_run("runs/demo/train_rew")       # config, model, params, predict fns
    config = rew_jax.load_config("configs/demo.py")     # a config file, as the CLI reads it

Importing rew_jax sets the CLI's XLA:CPU defaults (rew_jax/xla_cpu.py) in XLA_FLAGS, so a
program that imports rew_jax before its first JAX computation compiles as the CLI does;
REW_JAX_XLA_CPU_DEFAULTS=0 keeps XLA's own. The names below are loaded on first use, so
`import rew_jax` itself imports neither JAX nor the stages.
"""

from rew_jax import registry as _registry
from rew_jax import xla_cpu as _xla_cpu

__version__ = "0.1.0"

_xla_cpu.set_default_flags()

_NAMES = {
    "load_run": "rew_jax.runs",
    "Run": "rew_jax.runs",
    "load_config": "rew_jax.config",
    "ConfigError": "rew_jax.errors",
    "UserError": "rew_jax.errors",
}
__all__ = sorted(_NAMES) + ["__version__"]
__getattr__, __dir__ = _registry.lazy_names(__name__, _NAMES)
