"""Checkpoint converters: HF transformers GIT / CLIP vision weights → rew_jax GiT params,
CLIP's projected image embedding and DINOv2 → the frozen feature models (`clip_image`,
`dinov2`), HF BERT weights → the text encoder's params, and the unrolled ↔ scanned layer
layouts.

Weights come from a local directory (`model.safetensors`, sharded safetensors with an index,
or a torch `pytorch_model.bin`); nothing is ever downloaded. All arrays are numpy float32.

Layout map (HF torch Linear stores weight [out, in]; flax Dense kernels are [in, out]):
  vision_model.embeddings.patch_embedding.weight [D,3,P,P] → encoder/patch_embed/kernel [P,P,3,D]
  ...self_attn.{q,k,v}_proj / attention.self.{query,key,value} → attn/{query,key,value}
        kernel [D,H,K], bias [H,K];  out_proj / attention.output.dense → attn/out [H,K,D]
  CLIP layer_norm1/2 → ln_1/ln_2 (pre-LN); BERT attention.output.LayerNorm → ln_1,
  output.LayerNorm → ln_2 (post-LN); mlp.fc1/fc2 and intermediate.dense/output.dense → mlp.
  BERT embeddings.{word,position}_embeddings / LayerNorm → embed/{word,position}_embeddings
  / ln, the same for GIT and for BertModel (whose layers are the GIT decoder's layers).
  CLIP visual_projection.weight [E,D] (no bias) → projection/kernel [D,E].
  DINOv2 embeddings.{cls_token, position_embeddings, patch_embeddings.projection} →
  cls_token, pos_embedding, patch_embed (with bias); encoder.layer.{i}.norm1/2 → ln_1/ln_2,
  attention.{q,k,v,o}_proj (transformers 5) or attention.attention.{query,key,value} and
  attention.output.dense (the names of checkpoints saved before it) → attn, layer_scale1/2
  .lambda1 → ls_1/ls_2/scale, mlp.fc1/fc2 → mlp; layernorm → ln_final.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

import jax
import numpy as np

from rew_jax.errors import UserError
from rew_jax.models import git_config
from rew_jax.models import text_decoder
from rew_jax.models import vit as vit_lib


class CheckpointError(UserError):
  """A checkpoint directory or state dict that does not have the expected contents."""


# ---------------------------------------------------------------------------------------------
# Reading a local HF directory.


def require_dir(path: str, what: str) -> str:
  """`path` if it is a local folder, else a CheckpointError naming it and what belongs there."""
  if not path or not os.path.isdir(path):
    raise CheckpointError(f"{path or '(empty path)'}: no such folder; expected {what} "
                          "(config.json and model.safetensors, e.g. written by a "
                          "transformers model's save_pretrained)")
  return path


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """name → float32 numpy array from a local HF model directory (or a single file)."""
  if os.path.isdir(path):
    files = sorted(os.listdir(path))
    shards = [f for f in files if f.endswith(".safetensors")]
    if shards:
      paths = [os.path.join(path, f) for f in shards]
    elif "pytorch_model.bin" in files:
      paths = [os.path.join(path, "pytorch_model.bin")]
    else:
      raise CheckpointError(f"{path}: no *.safetensors or pytorch_model.bin inside")
  else:
    paths = [path]
  out = {}
  for p in paths:
    if p.endswith(".safetensors"):
      from safetensors.numpy import load_file
      out.update(load_file(p))
    else:
      import torch  # Only needed for torch pickles.
      sd = torch.load(p, map_location="cpu", weights_only=True)
      out.update({k: v.float().numpy() for k, v in sd.items()})
  return {k: np.asarray(v, np.float32) for k, v in out.items()}


def read_hf_config(path: str) -> dict[str, Any]:
  file = os.path.join(path, "config.json")
  if not os.path.exists(file):
    raise CheckpointError(f"{path}: config.json is missing")
  with open(file) as f:
    return json.load(f)


def model_config_from_hf(hf: Mapping[str, Any], *, max_prompt_len: int = 20,
                         max_target_len: int | None = None) -> dict[str, Any]:
  """A config.model dict equivalent to an HF GitConfig (as a dict, e.g. config.json)."""
  vis = dict(hf.get("vision_config") or {})
  width = vis.get("hidden_size", 768)
  patch = vis.get("patch_size", 16)
  max_pos = hf.get("max_position_embeddings", 1024)
  if max_target_len is None:
    max_target_len = min(max_pos - max_prompt_len, 64)
  return dict(
      variant=f"B/{patch}", image_size=vis.get("image_size", 224),
      vit=dict(width=width, depth=vis.get("num_hidden_layers", 12),
               num_heads=vis.get("num_attention_heads", 12),
               mlp_dim=vis.get("intermediate_size", 3072),
               activation=vis.get("hidden_act", "quick_gelu"),
               ln_eps=vis.get("layer_norm_eps", 1e-5)),
      decoder=dict(num_layers=hf.get("num_hidden_layers", 6),
                   hidden_size=hf.get("hidden_size", 768),
                   num_heads=hf.get("num_attention_heads", 12),
                   mlp_dim=hf.get("intermediate_size", 3072),
                   dropout=hf.get("hidden_dropout_prob", 0.1),
                   attention_dropout=0.0,
                   activation=hf.get("hidden_act", "gelu"),
                   ln_eps=hf.get("layer_norm_eps", 1e-12)),
      vocab_size=hf.get("vocab_size", 30522),
      max_prompt_len=max_prompt_len, max_target_len=max_target_len)


# ---------------------------------------------------------------------------------------------
# Torch layouts → flax layouts.


class _Reader:
  """Pops names from a state dict so that leftovers can be reported."""

  def __init__(self, sd: Mapping[str, np.ndarray], source: str):
    self.sd, self.source, self.used = sd, source, set()

  def __call__(self, name: str) -> np.ndarray:
    if name not in self.sd:
      raise CheckpointError(f"{self.source}: tensor {name!r} is missing")
    self.used.add(name)
    return self.sd[name]

  def dense(self, name: str):
    return {"kernel": self(name + ".weight").T, "bias": self(name + ".bias")}

  def heads_in(self, name: str, heads: int):
    w, b = self(name + ".weight"), self(name + ".bias")  # [H·K, D]
    return {"kernel": w.T.reshape(w.shape[1], heads, -1), "bias": b.reshape(heads, -1)}

  def heads_out(self, name: str, heads: int):
    w, b = self(name + ".weight"), self(name + ".bias")  # [D, H·K]
    return {"kernel": w.T.reshape(heads, -1, w.shape[0]), "bias": b}

  def norm(self, name: str):
    return {"scale": self(name + ".weight"), "bias": self(name + ".bias")}


def _vision(r: _Reader, prefix: str, spec: vit_lib.ViTSpec) -> dict:
  heads = spec.num_heads
  out = {
      "patch_embed": {"kernel": r(prefix + "embeddings.patch_embedding.weight")
                                .transpose(2, 3, 1, 0)},
      "class_embedding": r(prefix + "embeddings.class_embedding"),
      "pos_embedding": np.asarray(vit_lib.resize_posemb(
          r(prefix + "embeddings.position_embedding.weight"), spec.grid)),
      "ln_pre": r.norm(prefix + "pre_layrnorm"),
      "ln_post": r.norm(prefix + "post_layernorm"),
  }
  for i in range(spec.depth):
    p = f"{prefix}encoder.layers.{i}."
    out[f"blocks_{i}"] = {
        "ln_1": r.norm(p + "layer_norm1"),
        "attn": {"query": r.heads_in(p + "self_attn.q_proj", heads),
                 "key": r.heads_in(p + "self_attn.k_proj", heads),
                 "value": r.heads_in(p + "self_attn.v_proj", heads),
                 "out": r.heads_out(p + "self_attn.out_proj", heads)},
        "ln_2": r.norm(p + "layer_norm2"),
        "mlp": {"fc1": r.dense(p + "mlp.fc1"), "fc2": r.dense(p + "mlp.fc2")},
    }
  return out


def _bert_embeddings(r: _Reader, prefix: str, rows: int | None = None) -> dict:
  """BERT word + position embeddings and their LayerNorm → TextEmbed params; `rows` cuts
  or pads the position table to another length."""
  positions = r(prefix + "embeddings.position_embeddings.weight")
  return {
      "word_embeddings": {"embedding": r(prefix + "embeddings.word_embeddings.weight")},
      "position_embeddings": {"embedding": positions if rows is None else
                              _fit_rows(positions, rows)},
      "ln": r.norm(prefix + "embeddings.LayerNorm"),
  }


def _bert_layer(r: _Reader, prefix: str, heads: int) -> dict:
  """One post-LN BERT layer (`...encoder.layer.{i}.`) → DecoderLayer params."""
  return {
      "attn": {"query": r.heads_in(prefix + "attention.self.query", heads),
               "key": r.heads_in(prefix + "attention.self.key", heads),
               "value": r.heads_in(prefix + "attention.self.value", heads),
               "out": r.heads_out(prefix + "attention.output.dense", heads)},
      "ln_1": r.norm(prefix + "attention.output.LayerNorm"),
      "mlp": {"fc1": r.dense(prefix + "intermediate.dense"),
              "fc2": r.dense(prefix + "output.dense")},
      "ln_2": r.norm(prefix + "output.LayerNorm"),
  }


def _fit_rows(table: np.ndarray, rows: int) -> np.ndarray:
  """Keeps the first `rows` rows (or pads with zeros): position tables of other lengths."""
  if table.shape[0] >= rows:
    return table[:rows]
  return np.concatenate([table, np.zeros((rows - table.shape[0],) + table.shape[1:],
                                         table.dtype)])


def clip_vision_to_params(state_dict: Mapping[str, np.ndarray], model_config,
                          source: str = "state dict") -> dict:
  """HF CLIPVisionModel (or CLIPModel) weights → the `encoder` subtree of GiT params
  (unrolled, or stacked when config.scan_layers).

  Accepts names with the `vision_model.` prefix (CLIPModel and older CLIPVisionModel
  checkpoints) and without it (CLIPVisionModel in transformers 5).
  """
  spec = git_config.parse_config(model_config)
  sd = {k: np.asarray(v, np.float32) for k, v in state_dict.items()}
  prefix = "vision_model." if any(k.startswith("vision_model.") for k in sd) else ""
  encoder = _vision(_Reader(sd, source), prefix, spec.vit)
  return scan_params(encoder) if spec.scan_layers else encoder


def clip_image_to_params(state_dict: Mapping[str, np.ndarray], spec: vit_lib.ViTSpec,
                         source: str = "state dict") -> dict:
  """HF CLIPModel / CLIPVisionModelWithProjection weights → `clip_image` params:
  {encoder: the vision tower, projection: {kernel [D,E]}} (text tower tensors are ignored)."""
  sd = {k: np.asarray(v, np.float32) for k, v in state_dict.items()}
  if "visual_projection.weight" not in sd:
    raise CheckpointError(f"{source}: no visual_projection.weight (a CLIPVisionModel without "
                          "projection? save a CLIPModel or CLIPVisionModelWithProjection)")
  r = _Reader(sd, source)
  return {"encoder": _vision(r, "vision_model.", spec),
          "projection": {"kernel": r("visual_projection.weight").T}}


def clip_vision_spec_from_hf(hf: Mapping[str, Any]) -> dict[str, Any]:
  """The `clip_image` config.model fields of an HF CLIPConfig / CLIPVisionConfig dict."""
  vis = dict(hf.get("vision_config") or hf)
  return dict(image_size=vis.get("image_size", 224), patch_size=vis.get("patch_size", 32),
              width=vis.get("hidden_size", 768), depth=vis.get("num_hidden_layers", 12),
              num_heads=vis.get("num_attention_heads", 12),
              mlp_dim=vis.get("intermediate_size", 3072),
              activation=vis.get("hidden_act", "quick_gelu"),
              ln_eps=vis.get("layer_norm_eps", 1e-5),
              projection_dim=hf.get("projection_dim", vis.get("projection_dim", 512)))


def dinov2_to_params(state_dict: Mapping[str, np.ndarray], depth: int, num_heads: int,
                     source: str = "state dict") -> dict:
  """HF Dinov2Model weights (names with or without "dinov2.") → `dinov2` params.

  Checkpoints with SwiGLU MLPs (the giant model) or register tokens are refused by name.
  """
  sd = {k.removeprefix("dinov2."): np.asarray(v, np.float32) for k, v in state_dict.items()}
  if any(".mlp.weights_in" in k or ".mlp.gate_proj" in k for k in sd):
    raise CheckpointError(f"{source}: SwiGLU MLPs (DINOv2-g) are not supported")
  if "embeddings.register_tokens" in sd:
    raise CheckpointError(f"{source}: register tokens (Dinov2WithRegisters) are not supported")
  r = _Reader(sd, source)
  new_names = "encoder.layer.0.attention.q_proj.weight" in sd
  out = {
      "patch_embed": {"kernel": r("embeddings.patch_embeddings.projection.weight")
                                .transpose(2, 3, 1, 0),
                      "bias": r("embeddings.patch_embeddings.projection.bias")},
      "cls_token": r("embeddings.cls_token").reshape(-1),
      "pos_embedding": r("embeddings.position_embeddings")[0],
      "ln_final": r.norm("layernorm"),
  }
  for i in range(depth):
    p = f"encoder.layer.{i}."
    a = p + ("attention." if new_names else "attention.attention.")
    names = (("q_proj", "k_proj", "v_proj") if new_names else ("query", "key", "value"))
    out[f"blocks_{i}"] = {
        "ln_1": r.norm(p + "norm1"),
        "attn": {"query": r.heads_in(a + names[0], num_heads),
                 "key": r.heads_in(a + names[1], num_heads),
                 "value": r.heads_in(a + names[2], num_heads),
                 "out": r.heads_out(p + ("attention.o_proj" if new_names
                                         else "attention.output.dense"), num_heads)},
        "ls_1": {"scale": r(p + "layer_scale1.lambda1")},
        "ln_2": r.norm(p + "norm2"),
        "mlp": {"fc1": r.dense(p + "mlp.fc1"), "fc2": r.dense(p + "mlp.fc2")},
        "ls_2": {"scale": r(p + "layer_scale2.lambda1")},
    }
  leftover = sorted(k for k in sd if k not in r.used and k.startswith("encoder."))
  if leftover:
    raise CheckpointError(f"{source}: tensors not understood (more layers than config.json "
                          f"says?): {leftover[:5]}{' ...' if len(leftover) > 5 else ''}")
  return out


def git_to_params(state_dict: Mapping[str, np.ndarray], model_config,
                  source: str = "state dict") -> dict:
  """HF GitForCausalLM weights → GiT params {'params': ...} (unrolled or scanned per config)."""
  spec = git_config.parse_config(model_config)
  sd = {k: np.asarray(v, np.float32) for k, v in state_dict.items()}
  r = _Reader(sd, source)
  dec = spec.decoder
  params = {
      "encoder": _vision(r, "git.image_encoder.vision_model.", spec.vit),
      "visual_dense": r.dense("git.visual_projection.visual_projection.0"),
      "visual_ln": r.norm("git.visual_projection.visual_projection.1"),
      "embed": _bert_embeddings(r, "git.", dec.max_positions),
      "decoder": {f"layers_{i}": _bert_layer(r, f"git.encoder.layer.{i}.", dec.num_heads)
                  for i in range(dec.num_layers)},
      "head": r.dense("output"),
  }
  leftover = sorted(k for k in sd if k not in r.used and "position_ids" not in k and
                    "img_temporal_embedding" not in k)
  if leftover:
    raise CheckpointError(f"{source}: tensors not understood: {leftover[:5]}"
                          f"{' ...' if len(leftover) > 5 else ''}")
  if spec.scan_layers:
    params = scan_params(params)
  return {"params": params}


def load_hf_git(path: str, **config_kw) -> tuple[dict, dict]:
  """A local HF GIT directory → (config.model dict, params)."""
  model_config = model_config_from_hf(read_hf_config(path), **config_kw)
  return model_config, git_to_params(read_state_dict(path), model_config, source=path)


# ---------------------------------------------------------------------------------------------
# HF BERT (BertModel and heads on it) → text encoder params {embed, encoder}.

# HF hidden_act → layers.ACTIVATIONS ("gelu_new" is the tanh approximation).
_BERT_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                     "relu": "relu"}


def bert_spec_from_hf(hf: Mapping[str, Any], source: str = "config.json"
                      ) -> text_decoder.DecoderSpec:
  """The layer spec of an HF BertConfig (as a dict): BERT layers are the GIT decoder's."""
  if hf.get("model_type", "bert") != "bert":
    raise CheckpointError(f"{source}: model_type {hf.get('model_type')!r} is not 'bert'")
  if hf.get("position_embedding_type", "absolute") != "absolute":
    raise CheckpointError(f"{source}: only absolute position embeddings are supported")
  act = hf.get("hidden_act", "gelu")
  if act not in _BERT_ACTIVATIONS:
    raise CheckpointError(f"{source}: hidden_act {act!r} is not supported "
                          f"(known: {', '.join(_BERT_ACTIVATIONS)})")
  spec = text_decoder.DecoderSpec(
      num_layers=hf.get("num_hidden_layers", 12), hidden_size=hf.get("hidden_size", 768),
      num_heads=hf.get("num_attention_heads", 12), mlp_dim=hf.get("intermediate_size", 3072),
      dropout=hf.get("hidden_dropout_prob", 0.1),
      attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
      activation=_BERT_ACTIVATIONS[act], ln_eps=hf.get("layer_norm_eps", 1e-12),
      vocab_size=hf.get("vocab_size", 30522),
      max_positions=hf.get("max_position_embeddings", 512))
  if spec.hidden_size % spec.num_heads:
    raise CheckpointError(f"{source}: hidden_size {spec.hidden_size} is not divisible by "
                          f"num_attention_heads {spec.num_heads}")
  return spec


def bert_to_params(state_dict: Mapping[str, np.ndarray], spec: text_decoder.DecoderSpec,
                   source: str = "state dict") -> dict:
  """HF BERT weights (names with or without "bert.") → {embed, encoder: {layers_i}}.

  Heads on top (pooler, MLM, classifier) are ignored. Sentences are encoded as a single
  segment, so only token type 0 is ever used: its vector is added to every row of the
  position table, which leaves word + position + type unchanged without a type input.
  """
  sd = {k.removeprefix("bert."): np.asarray(v, np.float32) for k, v in state_dict.items()}
  r = _Reader(sd, source)
  embed = _bert_embeddings(r, "")
  types = "embeddings.token_type_embeddings.weight"
  if types in sd:
    table = embed["position_embeddings"]["embedding"]
    embed["position_embeddings"]["embedding"] = table + r(types)[:1]
  params = {"embed": embed,
            "encoder": {f"layers_{i}": _bert_layer(r, f"encoder.layer.{i}.", spec.num_heads)
                        for i in range(spec.num_layers)}}
  leftover = sorted(k for k in sd if k not in r.used and k.startswith(("embeddings.",
                                                                       "encoder.")) and
                    "position_ids" not in k)
  if leftover:
    raise CheckpointError(f"{source}: tensors not understood (more layers than config.json "
                          f"says?): {leftover[:5]}{' ...' if len(leftover) > 5 else ''}")
  return params


def load_hf_bert(path: str) -> tuple[text_decoder.DecoderSpec, dict]:
  """A local HF BERT directory (config.json + safetensors) → (spec, params)."""
  spec = bert_spec_from_hf(read_hf_config(path), source=os.path.join(path, "config.json"))
  return spec, bert_to_params(read_state_dict(path), spec, source=path)


# ---------------------------------------------------------------------------------------------
# Unrolled (layers_0, layers_1, ...) ↔ scanned (layers with a leading axis) layouts.

_INDEXED = re.compile(r"^(blocks|layers)_(\d+)$")


def scan_params(tree: dict) -> dict:
  """Stacks `blocks_i` / `layers_i` subtrees into `blocks` / `layers` (nn.scan layout)."""
  if not isinstance(tree, dict):
    return tree
  out, groups = {}, {}
  for key, value in tree.items():
    m = _INDEXED.match(key)
    if m:
      groups.setdefault(m.group(1), {})[int(m.group(2))] = value
    else:
      out[key] = scan_params(value)
  for name, items in groups.items():
    ordered = [items[i] for i in range(len(items))]
    out[name] = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *ordered)
  return out


def unscan_params(tree: dict) -> dict:
  """Inverse of `scan_params`."""
  if not isinstance(tree, dict):
    return tree
  out = {}
  for key, value in tree.items():
    if key in ("blocks", "layers") and isinstance(value, dict):
      n = jax.tree.leaves(value)[0].shape[0]
      for i in range(n):
        out[f"{key}_{i}"] = jax.tree.map(lambda x, i=i: x[i], value)
    else:
      out[key] = unscan_params(value)
  return out
