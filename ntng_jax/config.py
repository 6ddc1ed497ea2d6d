"""Config parsing and validation.

Config files (`configs/<family>.py`) expose `get_config(arg)`, `arg` being the part of
`--config=configs/bert.py:size=tiny,method=stacking` after the colon; `parse_arg` types it and
`validate` turns every bad value into a `ConfigError`: one sentence naming the field and the fix.
"""

from __future__ import annotations

import difflib
import errno
import os
import pathlib

import ml_collections

from ntng_jax import registry
from ntng_jax.errors import ConfigError  # noqa: F401  (re-exported)
from ntng_jax.methods.base import method_class
from ntng_jax.registry import is_import_path

METHODS = tuple(registry.METHODS)
DATA_SOURCES = ("synthetic", "text", "shards", "tfds")
COMPUTE_DTYPES = ("float32", "bfloat16")


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses 'key=value,key2=value2' into a ConfigDict typed after `defaults`.

  Unknown keys are an error, so a typo never silently falls back to a default.
  """
  parsed = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ConfigError(
        f"config argument '{key}' is unknown; valid keys are {', '.join(defaults)}."
      )
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


def check_method_name(name: str, field: str = "method.name") -> None:
  """A ConfigError unless `name` is a built-in method or an importable 'module:Class' that
  subclasses `ntng_jax.methods.base.Method` (imported here to check it)."""
  if is_import_path(name):
    method_class(name)  # raises ConfigError with the cause
    return
  _require(
    name in METHODS,
    f"{field} must be one of {', '.join(METHODS)} or 'module:Class' of"
    f" your own Method subclass; got {name!r}.",
  )


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the values a run depends on; raises ConfigError with one clear sentence."""
  m, d, t = config.model, config.data, config.train
  _require(
    m.family in ("bert", "t5", "gpt"),
    f"model.family must be 'bert', 't5' or 'gpt'; got {m.family!r}.",
  )
  check_method_name(config.method.name, "method.name")
  if is_import_path(str(config.optim.get("name", ""))):  # a user's 'module:fn' optimizer
    registry.user_optimizer(config.optim.name)  # raises ConfigError with the cause
  _require(
    d.source in DATA_SOURCES,
    f"data.source must be one of {', '.join(DATA_SOURCES)}; got {d.source!r}.",
  )
  if d.source in ("text", "shards"):
    _require(
      bool(d.path),
      f"data.path is empty but data.source={d.source!r} needs a file or directory;"
      " pass --config.data.path=PATH.",
    )
    _require(
      os.path.exists(d.path),
      f"data.path {d.path!r} does not exist; pass an existing file or"
      " directory with --config.data.path.",
    )
  for name in ("batch_size", "micro_batch_size"):
    _require(t[name] > 0, f"train.{name} must be a positive integer; got {t[name]}.")
  _require(
    t.batch_size % t.micro_batch_size == 0,
    f"train.batch_size ({t.batch_size}) must be a multiple of train.micro_batch_size"
    f" ({t.micro_batch_size}).",
  )
  _require(d.seq_len > 0, f"data.seq_len must be positive; got {d.seq_len}.")
  if m.family in ("bert", "gpt"):
    _require(
      d.seq_len <= m.max_length,
      f"data.seq_len ({d.seq_len}) exceeds model.max_length ({m.max_length}), the number of"
      " position embeddings; lower data.seq_len or raise model.max_length.",
    )
  _require(
    t.budget_hours > 0, f"train.budget_hours must be positive (RST hours); got {t.budget_hours}."
  )
  _require(
    t.compute_dtype in COMPUTE_DTYPES,
    f"train.compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}; got {t.compute_dtype!r}.",
  )
  for name in ("eval_every_rst_minutes", "checkpoint_every_rst_minutes"):
    _require(t[name] > 0, f"train.{name} must be positive; got {t[name]}.")
  _require(
    t.log_every_steps > 0, f"train.log_every_steps must be positive; got {t.log_every_steps}."
  )
  _require(
    config.optim.learning_rate > 0,
    f"optim.learning_rate must be positive; got {config.optim.learning_rate}.",
  )
  _require(
    t.max_steps >= 0,
    f"train.max_steps must be 0 (no limit) or a positive number of steps; got {t.max_steps}.",
  )
  _require(
    t.keep_checkpoints >= 1,
    f"train.keep_checkpoints must be at least 1 (the newest"
    f" checkpoint is what a run resumes from); got {t.keep_checkpoints}.",
  )
  _require(
    config.rst.repeats >= 1 and config.rst.warmup >= 0,
    f"rst.repeats must be at least 1 and rst.warmup at least 0; got {config.rst.repeats}"
    f" and {config.rst.warmup}.",
  )


def check_overrides(config: ml_collections.ConfigDict, flags: list[str]) -> None:
  """A ConfigError naming the nearest valid field for any `--config.A.B=...` flag that names no
  field of `config` (ml_collections would print a long traceback)."""
  for flag in flags:
    if not flag.startswith("--config."):
      continue
    dotted = flag[len("--config.") :].partition("=")[0]
    node, path = config, "config"
    for i, part in enumerate(dotted.split(".")):
      last = i == len(dotted.split(".")) - 1
      if not isinstance(node, ml_collections.ConfigDict):
        raise ConfigError(
          f"{flag.partition('=')[0]}: {path} is a value, not a section with"
          f" fields; pass --{path}=VALUE."
        )
      keys = list(node.keys())
      if part in keys:
        node, path = node[part], f"{path}.{part}"
        continue
      if last and part.startswith("no") and isinstance(node.get(part[2:]), bool):
        break  # --config.x.noflag: absl's negated boolean
      close = difflib.get_close_matches(part, keys, n=1, cutoff=0.6)
      hint = (
        f"did you mean --{path}.{close[0]}?"
        if close
        else f"the fields of {path} are {', '.join(sorted(keys))}."
      )
      raise ConfigError(f"{path} has no field {part} (from {flag.partition('=')[0]}); {hint}")


_NAME_MAX = 255  # bytes per path component on most file systems


def workdir_problem(path: str, error: OSError | None = None) -> str | None:
  """One sentence saying why `path` cannot be a run directory (None if it can), from the path
  itself or from an OSError met while writing into it."""
  for part in pathlib.PurePath(path).parts:
    if len(os.fsencode(part)) > _NAME_MAX:
      return (
        f"the path {path!r} has a component of {len(os.fsencode(part))} bytes"
        f" ({part[:24]}...), over the {_NAME_MAX}-byte limit of file systems; use a"
        " shorter directory name."
      )
  probe = pathlib.Path(path)
  while not probe.exists() and probe != probe.parent:
    probe = probe.parent
  if probe.exists() and not probe.is_dir():
    if probe == pathlib.Path(path):
      return (
        f"{path!r} is a file, not a directory; pass a directory for the run (a new one is made)."
      )
    return (
      f"{path!r} lies under {str(probe)!r}, which is a file, not a directory; pass a"
      " directory path that does not go through a file."
    )
  code = getattr(error, "errno", None)
  where = getattr(error, "filename", None) or str(probe)
  if code == errno.EROFS:
    return f"{where!r} is on a read-only file system; pass a --workdir on a writable one."
  if code in (errno.EACCES, errno.EPERM):
    return (
      f"permission denied for {where!r}; pass a --workdir you can write to or fix its permissions."
    )
  if error is None and probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
    return (
      f"cannot write to {str(probe)!r}; pass a --workdir you can write to or fix its permissions."
    )
  if code == errno.ENOSPC:
    return (
      f"no space left on the device holding {where!r}; free some space and rerun the same"
      " command (a run resumes from its last checkpoint)."
    )
  if code == errno.ENAMETOOLONG:
    return f"the path {where!r} is too long for the file system; use a shorter one."
  return None


def check_workdir(path: str) -> None:
  """A ConfigError if `path` cannot be a run directory (a file, under a file, not writable,
  a component over 255 bytes); call before any work is done."""
  problem = workdir_problem(path)
  if problem:
    raise ConfigError(problem)
