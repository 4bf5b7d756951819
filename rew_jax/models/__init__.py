"""GiT (CLIP-style ViT + GIT text decoder), its decoding, converters and FLOP counts."""
