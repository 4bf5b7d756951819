"""Models behind one interface (`base.Model`), registered by name in `registry.MODELS`.

GiT (CLIP-style ViT + GIT text decoder) is "git": `git.py` (network and registered model),
`git_config.py` (its config block), `decoding.py` and `git_predict.py` (decoding and the
evaluators' prediction functions), `convert.py` (HF weights), `flops.py` (counts).
Frozen image-feature models for visual matching: "clip_image" (`clip_image.py`, CLIP's
projected embedding) and "dinov2" (`dinov2.py`).
"""
