"""`gemma`: a local multimodal Gemma 3 in JAX through DeepMind's `gemma` package (extra).

    pip install 'rew_jax[gemma]'      # gemma==3.3.0 (+ sentencepiece 0.2.2); pulls TensorFlow

Everything comes from local paths: `checkpoint_dir` (an orbax checkpoint as released, read by
`gm.ckpts.load_params`) and `tokenizer_path` (the Gemma 3 sentencepiece file; the library's
default is a cloud bucket, so it is always passed). `model` names the `gm.nn` class
(Gemma3_4B, Gemma3_12B, Gemma3_27B: the multimodal ones).

Batched sampling: the runner calls `generate` from many threads; a `MicroBatcher` gathers
up to `batch_size` waiting prompts (waiting at most `batch_wait_s` for more) and samples
them in one call, so the accelerator sees batches while the runner stays per-record.
The sampler has no JSON-schema-constrained decoding: replies go through the same tolerant
parser as every backend's. Its prompts are padded to buckets of 256/512/1024 tokens, so
`cache_length` must exceed the bucket plus the image tokens (256 per image).

Compatibility shim (gemma 3.3.0 with kauldron 1.4.x): `gm.ckpts` still refers to
`kauldron.checkpoints.AbstractPartialLoader`, renamed `InitTransform`; aliased here.
"""

from __future__ import annotations

import io
import queue
import threading
from typing import Callable, Sequence

from rew_jax import config as config_lib
from rew_jax import registry
from rew_jax.curation.backends import base
from rew_jax.curation.prompts import Prompt

_TURN = "<start_of_turn>user\n<start_of_image>{text}<end_of_turn>\n<start_of_turn>model\n"


class MicroBatcher:
  """Turns concurrent single requests into batched calls of `fn(list) -> list`."""

  def __init__(self, fn: Callable[[Sequence], Sequence], batch_size: int, wait_s: float):
    self.fn, self.batch_size, self.wait_s = fn, batch_size, wait_s
    self._queue: queue.Queue = queue.Queue()
    self._thread = threading.Thread(target=self._loop, daemon=True)
    self._thread.start()
    self.batches: list[int] = []  # Sizes of the batches run (for tests and the report).

  def __call__(self, request, timeout_s: float | None = None):
    done = threading.Event()
    slot = {"request": request, "done": done}
    self._queue.put(slot)
    if not done.wait(timeout_s):
      raise base.TransientError("timeout", f"no batch slot within {timeout_s} s")
    if "error" in slot:
      raise slot["error"]
    return slot["result"]

  def _loop(self) -> None:
    while True:
      first = self._queue.get()
      if first is None:
        return
      batch = [first]
      while len(batch) < self.batch_size:
        try:
          nxt = self._queue.get(timeout=self.wait_s)
        except queue.Empty:
          break
        if nxt is None:
          self._queue.put(None)
          break
        batch.append(nxt)
      self.batches.append(len(batch))
      try:
        results = self.fn([s["request"] for s in batch])
        for s, r in zip(batch, results):
          s["result"] = r
      except Exception as e:  # Every waiter of the batch sees the failure.
        for s in batch:
          s["error"] = e
      for s in batch:
        s["done"].set()

  def close(self) -> None:
    self._queue.put(None)
    self._thread.join(timeout=5)


def _import_gemma():
  try:
    import kauldron.checkpoints as kd_ckpts  # pylint: disable=g-import-not-at-top
    if not hasattr(kd_ckpts, "AbstractPartialLoader") and hasattr(kd_ckpts, "InitTransform"):
      kd_ckpts.AbstractPartialLoader = kd_ckpts.InitTransform
    from gemma import gm  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise base.BackendError(f"curation backend 'gemma' needs the gemma extra "
                            f"(pip install 'rew_jax[gemma]'): {e}") from None
  return gm


@registry.CURATION_BACKENDS.register("gemma")
class GemmaLocal(base.Backend):
  name = "gemma"

  @classmethod
  def default_config(cls) -> config_lib.ConfigDict:
    return config_lib.ConfigDict(dict(
        model="Gemma3_4B",      # The `gm.nn` class: Gemma3_4B, Gemma3_12B, Gemma3_27B.
        checkpoint_dir="",      # Required: the released orbax checkpoint, a local path.
        tokenizer_path="",      # Required: the Gemma 3 sentencepiece file, a local path.
        cache_length=1536,      # Must exceed the prompt bucket plus 256 image tokens.
        max_new_tokens=512,
        batch_size=8,           # Prompts sampled together (keep curation.concurrency >= it).
        batch_wait_s=0.05,      # How long a batch waits for more prompts.
        image_size=896,
        seed=0))

  def __init__(self, *, model_obj=None, params=None, tokenizer=None, **kwargs):
    """`model_obj`/`params`/`tokenizer` let tests pass a tiny in-memory model."""
    self.cfg = c = self.options(kwargs)
    gm = _import_gemma()
    if model_obj is None:
      if not c["checkpoint_dir"] or not c["tokenizer_path"]:
        raise base.BackendError("curation backend 'gemma' needs gemma.checkpoint_dir and "
                                "gemma.tokenizer_path (local paths)")
      model_obj = getattr(gm.nn, c["model"])()
      params = gm.ckpts.load_params(c["checkpoint_dir"])
    if tokenizer is None:
      tokenizer = gm.text.Gemma3Tokenizer(path=c["tokenizer_path"])
    self.sampler = gm.text.Sampler(model=model_obj, params=params, tokenizer=tokenizer,
                                   cache_length=c["cache_length"],
                                   max_out_length=c["max_new_tokens"])
    self.tokenizer = tokenizer
    self.batcher = MicroBatcher(self._sample_batch, c["batch_size"], c["batch_wait_s"])

  def _image(self, data: bytes):
    import numpy as np  # pylint: disable=g-import-not-at-top
    from PIL import Image  # pylint: disable=g-import-not-at-top
    size = self.cfg["image_size"]
    img = Image.open(io.BytesIO(data)).convert("RGB").resize((size, size))
    return np.asarray(img, np.uint8)

  def _sample_batch(self, prompts: Sequence[Prompt]) -> list[str]:
    import numpy as np  # pylint: disable=g-import-not-at-top
    texts = [_TURN.format(text=p.text) for p in prompts]
    images = np.stack([self._image(p.image) for p in prompts])[:, None]  # [B, 1, H, W, 3]
    out = self.sampler.sample(texts, images=images, max_new_tokens=self.cfg["max_new_tokens"],
                              rng=self.cfg["seed"])
    return list(out) if not isinstance(out, str) else [out]

  def generate(self, prompt: Prompt, timeout_s: float) -> base.Reply:
    text = self.batcher(prompt, timeout_s)
    return base.Reply(text, input_tokens=len(self.tokenizer.encode(prompt.text)) + 256,
                      output_tokens=len(self.tokenizer.encode(text)))

  def close(self) -> None:
    self.batcher.close()
