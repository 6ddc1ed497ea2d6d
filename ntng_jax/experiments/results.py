"""Loads a sweep's runs for its report: every planned or found run under the root, with its
status, summary, curves and fine-tuning results.

A run's training-loss curve is its logged `train_loss`, except for batch selection, whose
`score_loss_mean` (the whole scored mega-batch, before the step) stands in: the kept sequences
are the hardest by design, so their loss is not comparable with other methods'.

Statuses: `ok` (stopped at the budget or max_steps), `diverged` (a non-finite loss), `failed`
(non-zero exit), `incomplete` (interrupted or still running), `missing` (planned, never started).
"""

from __future__ import annotations

import os

from ntng_jax.experiments import grid
from ntng_jax.experiments.finetune_results import number, read_finetune
from ntng_jax.experiments.run_files import read_json, read_metrics, read_summary

OK, DIVERGED, FAILED, INCOMPLETE, MISSING = "ok", "diverged", "failed", "incomplete", "missing"


def train_loss_of(record: dict) -> float | None:
  """The record's training loss as the report compares it (see the module docstring)."""
  return record.get("score_loss_mean", record.get("train_loss"))


def _run_status(summary: dict | None, entry: dict, has_metrics: bool) -> str:
  stopped = (summary or {}).get("stopped_because")
  if stopped in grid.COMPLETE:
    return OK
  if stopped == grid.DIVERGED or entry.get("status") == "diverged":
    return DIVERGED
  if entry.get("status") == "failed":
    return FAILED
  if summary is not None or has_metrics or entry.get("status") in ("running", "interrupted"):
    return INCOMPLETE
  return MISSING


def collect(root: str) -> dict:
  """Every run of the sweep under `root` (planned in sweep_status.json and/or found on disk)."""
  status = read_json(os.path.join(root, grid.STATUS_FILE)) or {}
  entries = dict(status.get("runs", {}))
  found = {}
  for dirpath, dirnames, _ in os.walk(root):
    parsed = grid.parse_run_dir(os.path.relpath(dirpath, root))
    if parsed:
      dirnames[:] = []  # do not descend into checkpoints etc.
      method, budget, seed = parsed
      if method != grid.IL_METHOD:
        found[f"{method}/budget-{grid.format_budget(budget)}/seed-{seed}"] = dirpath
  runs = []
  for key in sorted(set(entries) | set(found)):
    entry = entries.get(key, {})
    parsed = grid.parse_run_dir(key)
    if parsed is None or parsed[0] == grid.IL_METHOD:
      continue
    method, budget, seed = parsed
    workdir = found.get(key) or entry.get("workdir") or os.path.join(root, key)
    summary = read_summary(workdir)
    records = read_metrics(workdir)
    finetune = {}
    ft_dir = os.path.join(workdir, "finetune")
    if os.path.isdir(ft_dir):
      for name in sorted(os.listdir(ft_dir)):
        if name.endswith(".json"):
          result = read_finetune(os.path.join(ft_dir, name))
          if result is not None:
            finetune[name[:-5]] = result
    run_status = _run_status(summary, entry, bool(records))
    error = entry.get("error")
    if run_status == DIVERGED and not error:
      error = "non-finite training loss"
    runs.append(
      dict(
        key=key,
        method=method,
        budget_hours=budget,
        seed=seed,
        workdir=workdir,
        status=run_status,
        error=error if run_status in (FAILED, DIVERGED, INCOMPLETE) else None,
        returncode=entry.get("returncode"),
        summary=summary,
        finetune=finetune,
        finetune_status={k: v.get("status") for k, v in entry.get("finetune", {}).items()},
        curve=[
          (r["rst_seconds"], train_loss_of(r))
          for r in records
          if train_loss_of(r) is not None and "rst_seconds" in r
        ],
        validation_curve=[
          (r["rst_seconds"], r["validation_loss"])
          for r in records
          if r.get("validation_loss") is not None and "rst_seconds" in r
        ],
        epoch_curve=[
          (r["epoch"], r["validation_loss"])
          for r in records
          if r.get("validation_loss") is not None and number(r.get("epoch")) is not None
        ],
        epochs=max(
          (r["epoch"] for r in records if number(r.get("epoch")) is not None), default=None
        ),
      )
    )
  return dict(root=root, run_root=_run_root(status), status=status, runs=runs)


def data_repeated(collected: dict) -> bool:
  """True if some run saw its training data more than once."""
  return any((r.get("epochs") or 0.0) > 1.0 for r in collected["runs"])


def _run_root(status: dict) -> str | None:
  """The root as the sweep named it (a path relative to where it ran, or absolute)."""
  if status.get("root"):
    return status["root"]
  for key, entry in status.get("runs", {}).items():
    workdir = entry.get("workdir") or ""
    if workdir.endswith(os.sep + key):
      return workdir[: -len(key) - 1]
  return None


def runs_of(collected: dict, method: str, budget_hours: float, status: str | None = None) -> list:
  """The runs of one (method, budget) cell, optionally only those with `status`."""
  return [
    r
    for r in collected["runs"]
    if r["method"] == method
    and r["budget_hours"] == budget_hours
    and (status is None or r["status"] == status)
  ]
