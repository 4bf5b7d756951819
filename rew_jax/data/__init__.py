"""Data: tokenizers, preprocessing ops, the task mixture, Grain pipelines, TFDS sources."""
