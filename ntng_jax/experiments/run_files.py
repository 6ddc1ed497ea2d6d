"""What a run left on disk, read without jax: its summary.json, its metrics.jsonl and the state
the sweep derives from them (complete, diverged, partial, new), and whether a finished run was
made with the config fields a command now asks for."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from ntng_jax.experiments.grid import COMPLETE, DIVERGED
from ntng_jax.train.run_identity import recorded


def read_json(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def read_summary(workdir: str) -> dict | None:
  return read_json(os.path.join(workdir, "summary.json"))


def run_state(workdir: str) -> str:
  """'complete', 'diverged', 'partial' (a workdir without a final summary) or 'new'."""
  summary = read_summary(workdir)
  if summary is not None:
    if summary.get("stopped_because") in COMPLETE:
      return "complete"
    if summary.get("stopped_because") == DIVERGED:
      return "diverged"
  return "partial" if os.path.isdir(workdir) else "new"


def read_metrics(workdir: str) -> list[dict]:
  """The records of WORKDIR/metrics.jsonl; a line cut off by a kill is skipped."""
  records = []
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      for line in f:
        line = line.strip()
        if line:
          try:
            records.append(json.loads(line))
          except ValueError:
            continue
  except OSError:
    pass
  return records


def _same(old, flag: str) -> bool | None:
  """Whether a `--config.K=flag` value equals the recorded JSON value; None if its type is not
  one a flag spells plainly (lists, dicts), so it is not compared."""
  if isinstance(old, bool):
    return flag.lower() in (("true", "1") if old else ("false", "0"))
  if isinstance(old, (int, float)):
    try:
      return float(flag) == old
    except ValueError:
      return False
  if old is None:
    return flag in ("None", "none")
  if isinstance(old, str):
    return flag == old
  return None


def requested_fields(command: Sequence[str]) -> dict[str, str]:
  """{dotted config field: flag value} that a pretrain command sets: `method=`/`seed=` of its
  --config argument and every --config.K=V flag."""
  fields = {}
  for arg in command:
    if arg.startswith("--config="):
      for item in arg.partition(":")[2].split(","):
        key, _, value = item.partition("=")
        if key in ("method", "seed"):
          fields["method.name" if key == "method" else "seed"] = value
    elif arg.startswith("--config."):
      key, _, value = arg[len("--config.") :].partition("=")
      fields[key] = value
  return fields


def identity_mismatch(workdir: str, command: Sequence[str]) -> list[str]:
  """'field recorded → requested' for each field `command` sets that the run in `workdir` (its
  run.json) recorded with another value. Fields a resume may change are not recorded, so they
  are not compared; nor is a workdir without a record."""
  old = (recorded(workdir) or {}).get("fields", {})
  out = []
  for key, value in requested_fields(command).items():
    if key in old and _same(old[key], value) is False:
      out.append(f"{key} {json.dumps(old[key])} → {value}")
  return out
