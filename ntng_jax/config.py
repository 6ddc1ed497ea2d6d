"""Config parsing and validation.

Config files (`configs/bert.py`, `configs/t5.py`) expose `get_config(arg)`; `arg` is the part of
`--config=configs/bert.py:size=tiny,method=stacking` after the colon. `parse_arg` turns it into typed
fields, and `validate` turns every bad value into one sentence that names the field and the fix.
"""

from __future__ import annotations

import os

import ml_collections

from ntng_jax.errors import UserError

METHODS = ("baseline", "stacking", "layer_drop", "selective_backprop", "rho_loss", "il_model",
           "lion", "sophia")
DATA_SOURCES = ("synthetic", "text", "shards", "tfds")
COMPUTE_DTYPES = ("float32", "bfloat16")


class ConfigError(UserError, ValueError):
  """A config value is wrong; the message is one sentence naming the field and the fix."""


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses 'key=value,key2=value2' into a ConfigDict typed after `defaults`.

  Unknown keys are an error, so a typo never silently falls back to a default.
  """
  parsed = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ConfigError(f"config argument '{key}' is unknown; valid keys are {', '.join(defaults)}.")
    default = defaults[key]
    if not sep:
      value = "True"  # a bare flag such as 'runlocal'
    if isinstance(default, bool):
      parsed[key] = value.lower() in ("1", "true", "yes")
    elif isinstance(default, int):
      parsed[key] = int(value)
    elif isinstance(default, float):
      parsed[key] = float(value)
    else:
      parsed[key] = value
  return parsed


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the values a run depends on; raises ConfigError with one clear sentence."""
  m, d, t = config.model, config.data, config.train
  _require(m.family in ("bert", "t5"), f"model.family must be 'bert' or 't5'; got {m.family!r}.")
  _require(config.method.name in METHODS,
           f"method.name must be one of {', '.join(METHODS)}; got {config.method.name!r}.")
  _require(d.source in DATA_SOURCES,
           f"data.source must be one of {', '.join(DATA_SOURCES)}; got {d.source!r}.")
  if d.source in ("text", "shards"):
    _require(bool(d.path), f"data.path is empty but data.source={d.source!r} needs a file or directory;"
             " pass --config.data.path=PATH.")
    _require(os.path.exists(d.path), f"data.path {d.path!r} does not exist; pass an existing file or"
             " directory with --config.data.path.")
  for name in ("batch_size", "micro_batch_size"):
    _require(t[name] > 0, f"train.{name} must be a positive integer; got {t[name]}.")
  _require(t.batch_size % t.micro_batch_size == 0,
           f"train.batch_size ({t.batch_size}) must be a multiple of train.micro_batch_size"
           f" ({t.micro_batch_size}).")
  _require(d.seq_len > 0, f"data.seq_len must be positive; got {d.seq_len}.")
  if m.family == "bert":
    _require(d.seq_len <= m.max_length,
             f"data.seq_len ({d.seq_len}) exceeds model.max_length ({m.max_length}), the number of"
             " position embeddings; lower data.seq_len or raise model.max_length.")
  _require(t.budget_hours > 0, f"train.budget_hours must be positive (RST hours); got {t.budget_hours}.")
  _require(t.compute_dtype in COMPUTE_DTYPES,
           f"train.compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}; got {t.compute_dtype!r}.")
  for name in ("eval_every_rst_minutes", "checkpoint_every_rst_minutes"):
    _require(t[name] > 0, f"train.{name} must be positive; got {t[name]}.")
  _require(t.log_every_steps > 0, f"train.log_every_steps must be positive; got {t.log_every_steps}.")
  _require(config.optim.learning_rate > 0,
           f"optim.learning_rate must be positive; got {config.optim.learning_rate}.")


def get_config(family: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """The config of `configs/<family>.py` for `arg` ('size=tiny,method=...'), for library users,
  benchmarks and tests (the launch scripts take `--config=configs/<family>.py:ARG`)."""
  import importlib
  return importlib.import_module(f"configs.{family}").get_config(arg)
