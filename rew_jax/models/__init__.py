"""Models behind one interface (`base.Model`), registered by name in `registry.MODELS`.

GiT (CLIP-style ViT + GIT text decoder) is "git": `git.py` (network and registered model),
`git_config.py` (its config block), `decoding.py` and `git_predict.py` (decoding and the
evaluators' prediction functions), `convert.py` (HF weights), `flops.py` (counts).
"""
