"""The GiT prediction functions on a tiny model: likelihood scoring against a full
teacher-forced forward, and the zero-shot evaluator driven by the real decoding."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytestmark = pytest.mark.slow  # Compiles a tiny GiT's decoding (seconds, more on a busy CPU).

from rew_jax.evaluators import finegrained
from rew_jax.evaluators import knn_matching
from rew_jax.evaluators import zeroshot
from rew_jax.models import git
from rew_jax.models import git_predict

TINY = dict(variant="mu/8", image_size=32, vit=dict(width=32, depth=2, num_heads=2, mlp_dim=64),
            decoder=dict(num_layers=2, hidden_size=32, num_heads=4, mlp_dim=64, dropout=0.0),
            vocab_size=128, max_prompt_len=5, max_target_len=6)
# Class names as token ids < vocab_size; "20 21" extends "20" (a trie prefix).
CLASS_IDS = [[20], [20, 21], [30, 31, 32], [40, 41]]


class TinyTokenizer:
  """Maps the class names "c0".."c3" to CLASS_IDS; BERT's special ids."""
  bos_id, eos_id, pad_id = 101, 102, 0

  def encode_batch(self, texts):
    return [CLASS_IDS[int(t[1:])] for t in texts]



@pytest.fixture(scope="module")
def tiny():
  model = git.GiT(TINY)
  images = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
  prompts = jnp.array([[101, 5, 6, 0, 0], [101, 0, 0, 0, 0], [101, 7, 8, 9, 10]], jnp.int32)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), images, prompts,
                                        jnp.zeros((3, 6), jnp.int32)))
  return model, params, images, prompts


def test_class_likelihood_equals_teacher_forced_forward(tiny):
  model, params, images, prompts = tiny
  table = zeroshot.class_token_table(CLASS_IDS, 102)  # [4, 4]
  got = jax.jit(lambda *a: git_predict.class_log_likelihood(model, *a))(
      params, images, prompts, jnp.asarray(table))
  # All (image, class) pairs in one teacher-forced forward: row b * 4 + c.
  inputs = np.concatenate([np.full((4, 1), 101), table[:, :-1]], axis=1)
  logits = model.apply(params, jnp.repeat(images, 4, axis=0), jnp.repeat(prompts, 4, axis=0),
                       jnp.asarray(np.tile(inputs, (3, 1))))
  logp = np.asarray(jax.nn.log_softmax(logits, -1)).reshape(3, 4, table.shape[1], -1)
  picked = np.take_along_axis(logp, np.broadcast_to(table[None, :, :, None], (3, 4, 4, 1)),
                              -1)[..., 0]
  want = (picked * (table != 0)[None]).sum(-1)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_zeroshot_with_real_decoding(tiny):
  model, params, images, _ = tiny
  fns = git_predict.make(model, num_beams=2, max_len=4)
  names = [f"c{i}" for i in range(4)]
  data = finegrained.LabelledSet(
      "tiny", names, [{"image": np.asarray(images[i]), "label": i} for i in range(3)])
  class_map = [finegrained.ClassEntity(i, n, f"Q{i}", n, "exact", 1.0, "manual")
               for i, n in enumerate(names)]
  common = dict(sets={"tiny": data}, class_maps={"tiny": class_map},
                tokenizer=TinyTokenizer(), prompt="", batch_size=2,
                pp="tokenize(key='prompt', bos=True, max_len=5)|pad(5, key='prompt')")
  trie_eval = zeroshot.Evaluator(jax.jit(fns["class_rows"]), mode="trie", **common)
  lik_fn = jax.jit(fns["class_likelihood"])
  lik_eval = zeroshot.Evaluator(lik_fn, mode="likelihood", **common)
  trie_preds = trie_eval.predict(params, trie_eval.runs["tiny"])
  lik_preds = lik_eval.predict(params, lik_eval.runs["tiny"])
  assert all(0 <= p < 4 for p in trie_preds)  # Valid by construction.
  # The likelihood mode picks the argmax of the class scores (the empty prompt is BOS), in
  # example order across the padded last batch.
  prompt = jnp.array([[101, 0, 0, 0, 0]] * 2, jnp.int32)
  class_tokens = lik_eval.runs["tiny"].class_tokens
  scores = np.concatenate([np.asarray(lik_fn(params, {"image": images[i:i + 2], "prompt": prompt},
                                             class_tokens=class_tokens)["scores"])
                           for i in (0, 1)])
  assert lik_preds == np.argmax(scores[[0, 1, 3]], axis=1).tolist()
  assert dict(trie_eval.run(params))["zeroshot/tiny/top1"] == pytest.approx(
      100 * np.mean([p == i for i, p in enumerate(trie_preds)]))


def test_embed_for_knn(tiny):
  model, params, images, _ = tiny
  embed = jax.jit(git_predict.make(model)["embed"])
  emb = np.asarray(embed(params, {"image": images})["embedding"])
  assert emb.shape == (3, 32)
  pred = knn_matching.knn_classify(emb, emb, np.array([0, 1, 2]), k=1, num_classes=3)
  assert pred.tolist() == [0, 1, 2]  # Each image is its own nearest neighbour.
