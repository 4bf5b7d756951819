"""Models behind one interface (`base.Model`), registered by name in `registry.MODELS`.

GiT (CLIP-style ViT + GIT text decoder) is "git": `git.py` (network and registered model),
`git_config.py` (its config block), `decoding.py` and `git_predict.py` (decoding and the
evaluators' prediction functions), `convert.py` (HF weights), `flops.py` (counts).
Frozen image-feature models for visual matching: "clip_image" (`clip_image.py`, CLIP's
projected embedding) and "dinov2" (`dinov2.py`).

    from rew_jax import models
    model = models.MODELS.get("git")(models.git_default_config())  # a registered model
    spec = models.parse_git_config(config.model)               # the checked GiT spec
    out = models.beam_search(model.module, {"params": params}, images, prompts, num_beams=4)

Names load on first use (`import rew_jax.models` imports no network code).
"""

from rew_jax import registry as _registry

_NAMES = {
    "Model": ".base",
    "FrozenImageModel": ".base",
    "GiT": ".git",
    "GiTModel": ".git",
    "git_default_config": ".git_config:default_config",
    "parse_git_config": ".git_config:parse_config",
    "GiTSpec": ".git_config",
    "VisionTransformer": ".vit",
    "beam_search": ".decoding",
    "constrained_beam_search": ".decoding",
    "TokenTrie": ".trie",
    "load_trie": ".trie:load",
    "MODELS": "rew_jax.registry",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = _registry.lazy_names(__name__, _NAMES)
