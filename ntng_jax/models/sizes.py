"""Model sizes and the validated model config.

`base` is the paper's model (docs/paper.md §3.1 crammed BERT, §3.2 T5 v1.1 base); `small` and
`tiny` are shrunk versions for quick runs and tests.
"""

from __future__ import annotations

import ml_collections

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
)

# BERT: init_std is the N(0, init_std) of every dense and embedding weight.
# T5: init_std is the Mesh-TF initializer factor that multiplies every T5 init std (1.0 = paper).
_FAMILY = {
  "bert": dict(layer_norm_eps=1e-12, init_std=0.02),
  "t5": dict(layer_norm_eps=1e-6, init_std=1.0),
  "gpt": dict(layer_norm_eps=1e-5, init_std=0.02),  # GPT-2: N(0, 0.02), LayerNorm eps 1e-5
}

SIZES = {
  "bert": {
    "tiny": dict(
      num_layers=2,
      hidden_size=64,
      num_heads=2,
      head_dim=32,
      intermediate_size=256,
      vocab_size=2048,
      max_length=128,
    ),
    "small": dict(
      num_layers=4,
      hidden_size=256,
      num_heads=4,
      head_dim=64,
      intermediate_size=1024,
      vocab_size=8192,
      max_length=128,
    ),
    "base": dict(
      num_layers=16,
      hidden_size=768,
      num_heads=12,
      head_dim=64,
      intermediate_size=3072,
      vocab_size=32768,
      max_length=128,
    ),
  },
  "t5": {  # num_layers = blocks per stack (encoder = decoder); intermediate_size = d_ff.
    "tiny": dict(
      num_layers=2,
      hidden_size=64,
      num_heads=2,
      head_dim=32,
      intermediate_size=128,
      vocab_size=2048,
      max_length=512,
    ),
    "small": dict(
      num_layers=4,
      hidden_size=256,
      num_heads=4,
      head_dim=64,
      intermediate_size=1024,
      vocab_size=8192,
      max_length=512,
    ),
    "base": dict(
      num_layers=12,
      hidden_size=768,
      num_heads=12,
      head_dim=64,
      intermediate_size=2048,
      vocab_size=32128,
      max_length=512,
    ),
  },
  "gpt": {  # decoder-only (models/gpt.py); base = GPT-2 small, vocab padded 50257 -> 50304.
    "tiny": dict(
      num_layers=2,
      hidden_size=64,
      num_heads=2,
      head_dim=32,
      intermediate_size=256,
      vocab_size=2048,
      max_length=128,
    ),
    "small": dict(
      num_layers=4,
      hidden_size=256,
      num_heads=4,
      head_dim=64,
      intermediate_size=1024,
      vocab_size=8192,
      max_length=256,
    ),
    "base": dict(
      num_layers=12,
      hidden_size=768,
      num_heads=12,
      head_dim=64,
      intermediate_size=3072,
      vocab_size=50304,
      max_length=1024,
    ),
  },
}

_POSITIVE_INTS = (
  "num_layers",
  "hidden_size",
  "num_heads",
  "head_dim",
  "intermediate_size",
  "vocab_size",
  "max_length",
  "relative_attention_num_buckets",
  "relative_attention_max_distance",
)
_POSITIVE_FLOATS = ("layer_norm_eps", "init_std")


def _fail(msg: str):
  raise ValueError(msg)


def model_config(family: str, size: str, **overrides) -> ml_collections.ConfigDict:
  """Returns the model config of `family` ('bert'|'t5') at `size` ('tiny'|'small'|'base').

  `overrides` replace single fields, e.g. `model_config('bert', 'base', remat=True)`.
  Raises ValueError with one sentence naming the offending field.
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
    attention_impl=("auto", "einsum", "xla", "cudnn"), layer_loop=("auto", "scan", "unroll")
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
