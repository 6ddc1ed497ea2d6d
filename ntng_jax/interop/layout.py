"""ntng_jax parameters <-> the paper's PyTorch state dicts (names, shapes, transposes), numpy only.

BERT: cramming's `ScriptableLMForPreTraining` (arch bert-c5: pre-LN, fused `flash_mha.Wqkv`
[q|k|v, heads contiguous], GELU-GLU `dense_in` [x|gate], no biases on dense layers, tied
`decoder.weight` = `encoder.embedding.word_embedding.weight`). T5: nanoT5's `MyT5` with
`share_positional_bias=False` (a relative-position table in every self-attention block), HF T5
names. torch `Linear.weight` is [out, in]; an ntng kernel is [in..., out...], so a kernel with
`n_in` input axes maps to `kernel.reshape(prod(in), prod(out)).T`. Stacked ntng layers
(leading `layers` axis) become one torch name per layer. Buffers that `load_state_dict(strict=True)`
expects (cramming's `encoder.p` and per-layer `alpha`, both 1.0) are written as constants.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ntng_jax.errors import UserError


class LayoutError(UserError, ValueError):
  """Tensors that do not fit the model (missing, unexpected or misshapen names)."""


@dataclasses.dataclass(frozen=True)
class Rule:
  path: tuple[str, ...]  # ntng param path
  names: tuple[str, ...]  # torch names ('{i}' = layer index); several = tied copies
  kind: str = "copy"  # copy | dense (n_in input axes) | scalar1 (() <-> [1])
  n_in: int = 1
  stacked: bool = False


def _bert_rules() -> list[Rule]:
  lay = "encoder.layers.{i}."
  return [
    Rule(
      ("word_embed", "embedding"), ("encoder.embedding.word_embedding.weight", "decoder.weight")
    ),
    Rule(("position", "scale"), ("encoder.embedding.pos_embedding.scale_factor",), "scalar1"),
    Rule(("embed_norm", "scale"), ("encoder.embedding.norm.weight",)),
    Rule(("embed_norm", "bias"), ("encoder.embedding.norm.bias",)),
    Rule(("encoder", "layers", "norm1", "scale"), (lay + "norm1.weight",), stacked=True),
    Rule(("encoder", "layers", "norm1", "bias"), (lay + "norm1.bias",), stacked=True),
    Rule(
      ("encoder", "layers", "attn", "qkv", "kernel"),
      (lay + "attn.self_attention.flash_mha.Wqkv.weight",),
      "dense",
      1,
      True,
    ),
    Rule(
      ("encoder", "layers", "attn", "out", "kernel"), (lay + "attn.dense.weight",), "dense", 2, True
    ),
    Rule(("encoder", "layers", "norm2", "scale"), (lay + "norm2.weight",), stacked=True),
    Rule(("encoder", "layers", "norm2", "bias"), (lay + "norm2.bias",), stacked=True),
    Rule(
      ("encoder", "layers", "mlp", "wi", "kernel"), (lay + "ffn.dense_in.weight",), "dense", 1, True
    ),
    Rule(
      ("encoder", "layers", "mlp", "wo", "kernel"),
      (lay + "ffn.dense_out.weight",),
      "dense",
      1,
      True,
    ),
    Rule(("final_norm", "scale"), ("encoder.final_norm.weight",)),
    Rule(("final_norm", "bias"), ("encoder.final_norm.bias",)),
    Rule(("head", "kernel"), ("prediction_head.weight",), "dense", 1),
  ]


def _t5_attention(stack: str, ntng: str, torch_prefix: str) -> list[Rule]:
  base = (stack, "blocks", "layers", ntng)
  return [
    Rule(base + (p, "kernel"), (torch_prefix + f"{p}.weight",), "dense", 2 if p == "o" else 1, True)
    for p in ("q", "k", "v", "o")
  ]


def _t5_rules() -> list[Rule]:
  rules = [
    Rule(
      ("token_embed", "embedding"),
      ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"),
    ),
    Rule(("lm_head", "kernel"), ("lm_head.weight",), "dense", 1),
  ]
  for stack in ("encoder", "decoder"):
    blk = f"{stack}.block.{{i}}.layer."
    ff = 2 if stack == "decoder" else 1
    layers = (stack, "blocks", "layers")
    rules += _t5_attention(stack, "self_attn", blk + "0.SelfAttention.")
    rules += [
      Rule(
        layers + ("rel_bias", "rel_embedding"),
        (blk + "0.SelfAttention.relative_attention_bias.weight",),
        stacked=True,
      ),
      Rule(layers + ("self_norm", "scale"), (blk + "0.layer_norm.weight",), stacked=True),
      Rule(
        layers + ("mlp", "wi_0", "kernel"),
        (blk + f"{ff}.DenseReluDense.wi_0.weight",),
        "dense",
        1,
        True,
      ),
      Rule(
        layers + ("mlp", "wi_1", "kernel"),
        (blk + f"{ff}.DenseReluDense.wi_1.weight",),
        "dense",
        1,
        True,
      ),
      Rule(
        layers + ("mlp", "wo", "kernel"),
        (blk + f"{ff}.DenseReluDense.wo.weight",),
        "dense",
        1,
        True,
      ),
      Rule(layers + ("mlp_norm", "scale"), (blk + f"{ff}.layer_norm.weight",), stacked=True),
      Rule((stack, "final_norm", "scale"), (f"{stack}.final_layer_norm.weight",)),
    ]
    if stack == "decoder":
      rules += _t5_attention(stack, "cross_attn", blk + "1.EncDecAttention.")
      rules.append(
        Rule(layers + ("cross_norm", "scale"), (blk + "1.layer_norm.weight",), stacked=True)
      )
  return rules


RULES = {"bert": _bert_rules, "t5": _t5_rules}


def _constant_buffers(family: str, num_layers: int) -> dict[str, np.ndarray]:
  if family != "bert":
    return {}
  out = {"encoder.p": np.array(1.0, np.float32)}
  out.update({f"encoder.layers.{i}.alpha": np.array(1.0, np.float32) for i in range(num_layers)})
  return out


def _rules(family: str) -> list[Rule]:
  if family not in RULES:
    raise LayoutError(
      f"model family {family!r} has no PyTorch layout; export supports {', '.join(RULES)}."
    )
  return RULES[family]()


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _set(tree: dict, path, value) -> None:
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def _to_torch(rule: Rule, x: np.ndarray) -> np.ndarray:
  if rule.kind == "dense":
    n_in = int(np.prod(x.shape[: rule.n_in]))
    return np.ascontiguousarray(x.reshape(n_in, -1).T)
  if rule.kind == "scalar1":
    return x.reshape(1)
  return np.array(x, order="C")


def _from_torch(rule: Rule, w: np.ndarray, shape: tuple) -> np.ndarray:
  if rule.kind == "dense":
    return np.ascontiguousarray(w.T).reshape(shape)
  return np.asarray(w).reshape(shape)


def to_torch(family: str, params) -> dict[str, np.ndarray]:
  """The original code's state dict (name -> float32 numpy array) of unboxed ntng params."""
  out = {}
  depth = None
  for rule in _rules(family):
    x = np.asarray(_get(params, rule.path))
    if rule.stacked:
      depth = x.shape[0]
      per_layer = [_to_torch(rule, x[i]) for i in range(x.shape[0])]
      for name in rule.names:
        out.update({name.format(i=i): w for i, w in enumerate(per_layer)})
    else:
      w = _to_torch(rule, x)
      out.update({name: w for name in rule.names})
  out.update(_constant_buffers(family, depth or 0))
  return out


def from_torch(family: str, tensors: dict, abstract) -> dict:
  """Unboxed ntng params (numpy) from a state dict; `abstract`: the target tree of shapes
  (e.g. `ntng_jax.eval.pretrained.abstract_params(model)`). Tied copies must be equal; every
  tensor must be used (buffers aside), so a mismatch names the offending keys."""
  params, used = {}, set(_constant_buffers(family, 0))
  for rule in _rules(family):
    target = _get(abstract, rule.path)
    shape = tuple(target.shape)
    if rule.stacked:
      layers = []
      for i in range(shape[0]):
        layers.append(_read(rule, tensors, [n.format(i=i) for n in rule.names], shape[1:], used))
      value = np.stack(layers)
    else:
      value = _read(rule, tensors, list(rule.names), shape, used)
    _set(params, rule.path, value.astype(np.dtype(target.dtype), copy=False))
  extra = sorted(n for n in tensors if n not in used and not _is_buffer(family, n))
  if extra:
    raise LayoutError(
      f"{len(extra)} tensors do not belong to this {family} model (e.g."
      f" {', '.join(extra[:3])}); check model.num_layers and the family."
    )
  return params


def _is_buffer(family: str, name: str) -> bool:
  return family == "bert" and (name == "encoder.p" or name.endswith(".alpha"))


def _read(rule: Rule, tensors: dict, names: list[str], shape: tuple, used: set) -> np.ndarray:
  missing = [n for n in names if n not in tensors]
  if len(missing) == len(names):
    raise LayoutError(
      f"tensor {names[0]!r} is missing; the file does not hold a model of this"
      " config (check model.num_layers and the family)."
    )
  present = [n for n in names if n in tensors]
  first = np.asarray(tensors[present[0]])
  for n in present[1:]:
    if not np.array_equal(first, np.asarray(tensors[n])):
      raise LayoutError(f"tied tensors {present[0]!r} and {n!r} differ; ntng_jax ties them.")
  used.update(present)
  try:
    return _from_torch(rule, first, shape)
  except ValueError:
    raise LayoutError(
      f"tensor {present[0]!r} has shape {list(first.shape)}, which does not fit"
      f" the model's {list(shape)}; check the config."
    ) from None


def manifest(family: str, params) -> dict[str, list[int]]:
  """{torch name: shape} of `to_torch(family, params)` (params may be ShapeDtypeStructs)."""
  zeros = _tree_map(lambda a: np.zeros(a.shape, np.float32), params)
  return {k: list(v.shape) for k, v in sorted(to_torch(family, zeros).items())}


def _tree_map(fn, tree):
  if isinstance(tree, dict):
    return {k: _tree_map(fn, v) for k, v in tree.items()}
  return fn(tree)


# -------------------------------------------------------------------------------------------------
# The original codebases' configs.


def torch_config(model_cfg, seq_len: int) -> dict:
  """The JSON config of the original code for `model_cfg` (an ntng model config)."""
  c = model_cfg
  if c.family == "bert":
    arch = dict(
      architectures=["ScriptableMaskedLM"],
      num_transformer_layers=int(c.num_layers),
      hidden_size=int(c.hidden_size),
      intermed_size=int(c.intermediate_size),
      hidden_dropout_prob=float(c.dropout_rate),
      norm="LayerNorm",
      norm_eps=float(c.layer_norm_eps),
      norm_scheme="pre",
      nonlin="GELUglu",
      tie_weights=True,
      sparse_prediction=True,
      decoder_bias=False,
      loss="cross-entropy",
      z_loss_factor=0,
      gradient_checkpointing=False,
      layer_fusion=True,
      embedding=dict(
        vocab_size=int(c.vocab_size),
        pos_embedding="scaled-sinusoidal",
        dropout_prob=float(c.dropout_rate),
        pad_token_id=0,
        max_seq_length=int(c.max_length),
        embedding_dim=int(c.hidden_size),
        normalization=True,
      ),
      attention=dict(
        type="flash-attention-impl",
        causal_attention=False,
        num_attention_heads=int(c.num_heads),
        dropout_prob=float(c.attention_dropout_rate),
        skip_output_projection=False,
        qkv_bias=False,
        rotary_embedding=False,
        seq_op_in_fp32=False,
        sequence_op="torch-softmax",
        high_level_fusion=False,
        low_level_fusion=True,
      ),
      init=dict(type="normal", std=float(c.init_std)),
      ffn_layer_frequency=1,
      deepnorm_scaling=False,
      skip_head_transform=True,
      layer_drop=dict(enabled=False, max_theta=0.5, gamma_factor=100),
      use_bias=False,
      final_norm=True,
      recurrent_layers=None,
      layer_macro_type="transformer",
      num_labels=None,
      classification_head=dict(
        pooler="avg",
        include_ff_layer=True,
        head_dim=1024,
        nonlin="Tanh",
        classifier_dropout=float(c.dropout_rate),
      ),
    )
    return dict(
      model_type="crammedBERT",
      architectures=["ScriptableLMForPreTraining"],
      arch=arch,
      seq_len=int(seq_len),
    )
  if c.family == "t5":
    return dict(
      model_type="t5",
      architectures=["MyT5"],
      vocab_size=int(c.vocab_size),
      d_model=int(c.hidden_size),
      d_kv=int(c.head_dim),
      d_ff=int(c.intermediate_size),
      num_layers=int(c.num_layers),
      num_decoder_layers=int(c.num_layers),
      num_heads=int(c.num_heads),
      relative_attention_num_buckets=int(c.relative_attention_num_buckets),
      relative_attention_max_distance=int(c.relative_attention_max_distance),
      dropout_rate=float(c.dropout_rate),
      layer_norm_epsilon=float(c.layer_norm_eps),
      initializer_factor=float(c.init_std),
      feed_forward_proj="gated-gelu",
      is_encoder_decoder=True,
      tie_word_embeddings=False,
      use_cache=True,
      pad_token_id=0,
      eos_token_id=1,
      decoder_start_token_id=0,
      share_positional_bias=False,
      input_length=int(seq_len),
    )
  raise LayoutError(
    f"model family {c.family!r} has no PyTorch layout; export supports {', '.join(RULES)}."
  )
