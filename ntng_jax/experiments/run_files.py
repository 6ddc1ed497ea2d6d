"""What a run left on disk, read without jax: its summary.json, its metrics.jsonl and the state
the sweep derives from them (complete, diverged, partial, new)."""

from __future__ import annotations

import json
import os

from ntng_jax.experiments.grid import COMPLETE, DIVERGED


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
