"""A run's identity, recorded in `workdir/run.json` at the start: what a resume must not change.

The identity is every config field except those in `ALLOWED` (what is logged, kept, laid out or
cached, never what is trained), plus the RST table's content (not its path). A resume whose
identity differs stops with a `RunIdentityError` listing the fields; `train.budget_hours` is never
allowed (the learning rate follows the budget fraction). Rationale: docs/architecture.md.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os

from ntng_jax.errors import UserError

IDENTITY_FILE = "run.json"
ALLOWED = (
  "train.log_every_steps",
  "train.eval_every_rst_minutes",
  "train.checkpoint_every_rst_minutes",
  "train.keep_checkpoints",
  "train.max_steps",  # a step cap for tests and debugging
  "train.compilation_cache_dir",
  "mesh.",  # mesh and remat: same math, other layout (not bitwise across the change)
  "model.remat",
  "data.validation.",
  "data.tfds_data_dir",
  "rst.repeats",
  "rst.warmup",
  "rst.table",
)
# rst.table is a path or a name; the table's content is compared instead (`rst_table`).
TABLE_KEY = "rst_table"
# What a resume may not change and is listed first when it did (the usual suspects).
_ORDER = (
  "model.",
  "method.",
  "seed",
  "train.batch_size",
  "train.micro_batch_size",
  "data.",
  "optim.",
  "train.budget_hours",
  TABLE_KEY,
)


class RunIdentityError(UserError, ValueError):
  """The workdir holds a run of another configuration."""


def _allowed(key: str) -> bool:
  return any(key == a or (a.endswith(".") and key.startswith(a)) for a in ALLOWED)


def _flatten(tree, prefix=""):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flatten(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def config_identity(config) -> dict:
  """{dotted field: JSON value} of every field a resume must keep."""
  tree = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return {k: json.loads(json.dumps(v, default=str)) for k, v in _flatten(tree) if not _allowed(k)}


def table_identity(table) -> str:
  """The RST table's name and a hash of its content."""
  text = json.dumps(table.to_json(), sort_keys=True)
  return f"{table.name} (sha256 {hashlib.sha256(text.encode()).hexdigest()[:12]})"


def _path(workdir: str) -> str:
  return os.path.join(workdir, IDENTITY_FILE)


def has_run(workdir: str) -> bool:
  """True if `workdir` holds a run that a start would resume (a checkpoint or a summary)."""
  ckpt = os.path.join(workdir, "checkpoints")
  if os.path.isdir(ckpt) and any(n.isdigit() for n in os.listdir(ckpt)):
    return True
  return os.path.exists(os.path.join(workdir, "summary.json"))


def recorded(workdir: str) -> dict | None:
  """The recorded identity; for a workdir from before run.json, the one of its config.json."""
  for path, from_config in ((_path(workdir), False), (os.path.join(workdir, "config.json"), True)):
    if os.path.exists(path):
      try:
        with open(path) as f:
          data = json.load(f)
      except (OSError, ValueError):
        continue
      if from_config:
        return {"fields": config_identity(data)}
      return data
  return None


def record(workdir: str, config, table=None) -> None:
  """Writes run.json for a new run (atomically)."""
  data = {
    "fields": config_identity(config),
    "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }
  if table is not None:
    data[TABLE_KEY] = table_identity(table)
  tmp = _path(workdir) + ".tmp"
  with open(tmp, "w") as f:
    json.dump(data, f, indent=1, sort_keys=True)
  os.replace(tmp, _path(workdir))


def add_table(workdir: str, table) -> None:
  """Records the table of a run whose run.json predates it (legacy workdirs)."""
  data = recorded(workdir) or {}
  data[TABLE_KEY] = table_identity(table)
  with open(_path(workdir) + ".tmp", "w") as f:
    json.dump(data, f, indent=1, sort_keys=True)
  os.replace(_path(workdir) + ".tmp", _path(workdir))


def _fmt(value) -> str:
  return "(unset)" if value is None else json.dumps(value)


def differences(old: dict, new: dict) -> list[str]:
  """'field: old → new' for each field present on both sides whose value changed."""
  keys = [k for k in old if k in new and old[k] != new[k]]
  rank = lambda k: next((i for i, p in enumerate(_ORDER) if k == p or k.startswith(p)), len(_ORDER))
  return [f"{k} {_fmt(old[k])} → {_fmt(new[k])}" for k in sorted(keys, key=lambda k: (rank(k), k))]


def check(workdir: str, config, table=None) -> None:
  """Raises RunIdentityError if the run in `workdir` was started with another identity.

  `table=None` checks the config fields only (done first, before any data is built); call again
  with the resolved table to compare it as well."""
  old = recorded(workdir)
  if old is None:
    return
  diffs = differences(old.get("fields", {}), config_identity(config))
  if table is not None and TABLE_KEY in old and old[TABLE_KEY] != table_identity(table):
    diffs.append(f"RST table {old[TABLE_KEY]} → {table_identity(table)}")
  if not diffs:
    return
  shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
  budget = any(d.startswith("train.budget_hours") for d in diffs)
  why = (
    " (a budget cannot be extended: the learning rate follows the fraction of the budget"
    " spent, so it would jump back up)"
    if budget
    else ""
  )
  raise RunIdentityError(
    f"{workdir} holds a run started with another configuration ({shown}){why}; resume it with"
    " the original values, use another --workdir, or rerun with --restart to set the old run"
    " aside under WORKDIR/previous/ and start a new one (changes allowed on resume: logging,"
    " evaluation and checkpoint intervals, keep_checkpoints, max_steps, mesh, remat and extra"
    " validation sets)."
  )


SET_ASIDE = (
  "checkpoints",
  "metrics.jsonl",
  "summary.json",
  "tensorboard",
  IDENTITY_FILE,
  "config.json",
)


def set_aside(workdir: str) -> str | None:
  """`--restart`: moves the previous run's files to `workdir/previous/<UTC time>/` (nothing is
  deleted) and returns that directory, or None if there was nothing to move."""
  present = [n for n in SET_ASIDE if os.path.exists(os.path.join(workdir, n))]
  if not present:
    return None
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
  target, i = os.path.join(workdir, "previous", stamp), 1
  while os.path.exists(target):
    target, i = os.path.join(workdir, "previous", f"{stamp}-{i}"), i + 1
  os.makedirs(target)
  for name in present:
    os.rename(os.path.join(workdir, name), os.path.join(target, name))
  return target
