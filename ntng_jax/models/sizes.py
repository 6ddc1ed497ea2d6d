"""Model sizes (`SIZES`) and the validated model config (`model_config`, `validate`).

`base` is the paper's model (docs/paper.md §3.1 crammed BERT, §3.2 T5 v1.1 base; GPT: GPT-2
small); `small` and `tiny` are shrunk versions for quick runs and tests.
"""

from __future__ import annotations

import ml_collections

from ntng_jax.errors import ConfigError

FAMILIES = ("bert", "t5", "gpt")

# Fields shared by every family and size (overridable).
_COMMON = dict(
  relative_attention_num_buckets=32,
  relative_attention_max_distance=128,
  remat=False,
  dropout_rate=0.0,  # hidden-state dropout when deterministic=False
  attention_dropout_rate=0.0,  # dropout on attention probabilities when deterministic=False
  attention_impl="auto",  # auto | einsum | xla | cudnn (layers.resolve_attention_impl)
  layer_loop="auto",  # auto | scan | unroll: the layer stack as a loop or unrolled
  layer_drop_impl="auto",  # auto | cond | compact: how a keep vector runs (stack.py)
)

# BERT: init_std is the N(0, init_std) of every dense and embedding weight.
# T5: init_std is the Mesh-TF initializer factor that multiplies every T5 init std (1.0 = paper).
_FAMILY = {
  "bert": dict(layer_norm_eps=1e-12, init_std=0.02),
  "t5": dict(layer_norm_eps=1e-6, init_std=1.0),
  "gpt": dict(layer_norm_eps=1e-5, init_std=0.02),  # GPT-2: N(0, 0.02), LayerNorm eps 1e-5
}

# Each size: (num_layers, hidden_size, num_heads, head_dim, intermediate_size, vocab_size,
# max_length). T5: num_layers = blocks per stack (encoder = decoder), intermediate_size = d_ff.
# GPT (models/gpt.py): base = GPT-2 small, vocab padded 50257 -> 50304.
_SIZE_FIELDS = (
  "num_layers",
  "hidden_size",
  "num_heads",
  "head_dim",
  "intermediate_size",
  "vocab_size",
  "max_length",
)
_SIZE_ROWS = {
  "bert": {
    "tiny": (2, 64, 2, 32, 256, 2048, 128),
    "small": (4, 256, 4, 64, 1024, 8192, 128),
    "base": (16, 768, 12, 64, 3072, 32768, 128),
  },
  "t5": {
    "tiny": (2, 64, 2, 32, 128, 2048, 512),
    "small": (4, 256, 4, 64, 1024, 8192, 512),
    "base": (12, 768, 12, 64, 2048, 32128, 512),
  },
  "gpt": {
    "tiny": (2, 64, 2, 32, 256, 2048, 128),
    "small": (4, 256, 4, 64, 1024, 8192, 256),
    "base": (12, 768, 12, 64, 3072, 50304, 1024),
  },
}
SIZES = {
  family: {size: dict(zip(_SIZE_FIELDS, row)) for size, row in rows.items()}
  for family, rows in _SIZE_ROWS.items()
}

_POSITIVE_INTS = (
  *_SIZE_FIELDS,
  "relative_attention_num_buckets",
  "relative_attention_max_distance",
)
_POSITIVE_FLOATS = ("layer_norm_eps", "init_std")


def _fail(msg: str):
  raise ConfigError(msg)


def model_config(family: str, size: str, **overrides) -> ml_collections.ConfigDict:
  """Returns the model config of `family` ('bert'|'t5'|'gpt') at `size` ('tiny'|'small'|'base').

  `overrides` replace single fields, e.g. `model_config('bert', 'base', remat=True)`.
  Raises ConfigError (a ValueError) with one sentence naming the offending field.
  """
  if family not in FAMILIES:
    _fail(f"model.family must be one of {', '.join(FAMILIES)}; got {family!r}.")
  if size not in SIZES[family]:
    _fail(f"model.size must be one of {', '.join(SIZES[family])}; got {size!r}.")
  fields = dict(family=family, size=size, **_COMMON, **_FAMILY[family], **SIZES[family][size])
  for key, value in overrides.items():
    if key in ("family", "size"):
      _fail(f"model.{key} cannot be overridden; pass it as an argument of model_config.")
    if key not in fields:
      _fail(f"model.{key} is not a model field; known fields: {', '.join(sorted(fields))}.")
    fields[key] = value
  validate(fields)
  return ml_collections.ConfigDict(fields)


def with_defaults(cfg) -> dict:
  """`cfg` as a dict, with shared fields it lacks (configs saved by older versions) defaulted."""
  return {**_COMMON, **dict(cfg)}


def validate(cfg) -> None:
  """Checks field types and cross-field constraints of a model config (dict or ConfigDict)."""
  cfg = dict(cfg)
  for key in _POSITIVE_INTS:
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
      _fail(f"model.{key} must be a positive integer; got {v!r}.")
  for key in _POSITIVE_FLOATS:
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
      _fail(f"model.{key} must be a positive number; got {v!r}.")
  if not isinstance(cfg["remat"], bool):
    _fail(f"model.remat must be a bool; got {cfg['remat']!r}.")
  for key in ("dropout_rate", "attention_dropout_rate"):
    rate = cfg[key]
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
      _fail(f"model.{key} must be a number in [0, 1); got {rate!r}.")
  if cfg["family"] == "gpt" and cfg["num_heads"] * cfg["head_dim"] != cfg["hidden_size"]:
    _fail(
      f"model.hidden_size must equal num_heads * head_dim for GPT; got "
      f"{cfg['hidden_size']} != {cfg['num_heads']} * {cfg['head_dim']}."
    )
  choices = dict(
    attention_impl=("auto", "einsum", "xla", "cudnn"),
    layer_loop=("auto", "scan", "unroll"),
    layer_drop_impl=("auto", "cond", "compact"),
  )
  for key, allowed in choices.items():
    if cfg[key] not in allowed:
      _fail(f"model.{key} must be one of {', '.join(allowed)}; got {cfg[key]!r}.")
  if cfg["family"] == "bert":
    if cfg["num_heads"] * cfg["head_dim"] != cfg["hidden_size"]:
      _fail(
        f"model.hidden_size must equal num_heads * head_dim for BERT; got "
        f"{cfg['hidden_size']} != {cfg['num_heads']} * {cfg['head_dim']}."
      )
    if cfg["intermediate_size"] % 2:
      _fail(
        f"model.intermediate_size must be even for BERT's GLU split; got "
        f"{cfg['intermediate_size']}."
      )
  if cfg["family"] == "t5" and cfg["relative_attention_num_buckets"] % 2:
    _fail(
      f"model.relative_attention_num_buckets must be even (the encoder splits them by "
      f"direction); got {cfg['relative_attention_num_buckets']}."
    )
