"""Where a run's records go: `workdir/metrics.jsonl`, TensorBoard and the console progress line.

A record is a flat dict with `step` (int) and scalars (RST in seconds); one JSON object per line,
unique per (step, kind), so a resumed run's file reads like an uninterrupted one. TensorBoard event
files come from tensorboardX when installed, behind clu's writer interface (`write_scalars`,
`flush`, `close`) but without clu, which imports TensorFlow (docs/architecture.md).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
import time
from typing import Mapping


def _record_key(record: Mapping) -> tuple:
  """What makes a record unique in a run: its step and kind (train, validation or an event)."""
  return (
    int(record.get("step", 0)),
    "train_loss" in record,
    "validation_loss" in record,
    record.get("event"),
  )


def _read_records(path: str) -> list[dict]:
  """The records of a metrics.jsonl; a line cut short by a kill is dropped."""
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except ValueError:
        continue
  return records


class JsonlWriter:
  """Appends one JSON object per record to `path` (records are flushed at once: a killed run keeps
  everything it logged). On resume, records after `resume_step` (logged past the last checkpoint
  and about to be recomputed) are dropped, and a record whose step and kind is already in the file
  is not written again, so the file reads like an uninterrupted run."""

  def __init__(self, path: str, resume_step: int | None = None):
    self.path = path
    self.kept: list[dict] = []
    if resume_step is not None and os.path.exists(path):
      self.kept = [r for r in _read_records(path) if r.get("step", 0) <= resume_step]
      tmp = path + ".tmp"
      with open(tmp, "w") as f:
        f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in self.kept)
      os.replace(tmp, path)
    elif resume_step is None and os.path.exists(path):
      os.remove(path)
    self._seen = {_record_key(r) for r in self.kept}
    self._file = open(path, "a")

  def write(self, record: Mapping) -> bool:
    """Writes `record` unless the file already holds its step and kind; True if written."""
    key = _record_key(record)
    if key in self._seen:
      return False
    self._seen.add(key)
    self._file.write(json.dumps(record, sort_keys=True) + "\n")
    self._file.flush()
    return True

  def close(self) -> None:
    self._file.close()


class TensorBoardWriter:
  """Scalars to TensorBoard event files under `logdir` (a no-op without tensorboardX).

  With `replay` (the records metrics.jsonl kept: none for a new run) the event files are rewritten
  from those records, so TensorBoard shows no points from steps recomputed after a kill."""

  def __init__(self, logdir: str, replay: list | None = None):
    try:
      from tensorboardX import SummaryWriter
    except ImportError:
      self._writer = None
      return
    if replay is not None and os.path.isdir(logdir):
      for name in os.listdir(logdir):  # derived data: metrics.jsonl is the record
        if name.startswith("events.out.tfevents"):
          os.remove(os.path.join(logdir, name))
    self._writer = SummaryWriter(logdir)
    for record in replay or ():
      self.write_scalars(int(record["step"]), {k: v for k, v in record.items() if k != "step"})

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if self._writer is None:
      return
    for key, value in scalars.items():
      if isinstance(value, (int, float)) and math.isfinite(value):
        self._writer.add_scalar(key, value, step)

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


class MetricsLogger:
  """Everything a record goes to: metrics.jsonl, TensorBoard and (for progress) the console."""

  def __init__(self, workdir: str, resume_step: int | None, enabled: bool = True):
    self.enabled = enabled
    if enabled:
      self.jsonl = JsonlWriter(os.path.join(workdir, "metrics.jsonl"), resume_step)
      self.tb = TensorBoardWriter(os.path.join(workdir, "tensorboard"), replay=self.jsonl.kept)

  def write(self, record: Mapping) -> None:
    if not self.enabled:
      return
    if self.jsonl.write(record):
      self.tb.write_scalars(int(record["step"]), {k: v for k, v in record.items() if k != "step"})

  def close(self) -> None:
    if self.enabled:
      self.jsonl.close()
      self.tb.close()


def format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  return str(datetime.timedelta(seconds=int(round(seconds))))


class Progress:
  """Console progress line: step, loss, RST used / budget, tokens/s and a wall-clock ETA.

  The ETA extrapolates the recent rate of RST seconds charged per wall second to the rest of the
  budget (an exponential average, so a one-off compile does not distort it for long).
  """

  def __init__(self, budget_seconds: float, stream=None):
    self.budget = budget_seconds
    self.stream = stream  # None: sys.stdout at print time (so redirect_stdout works)
    self._last = None  # (wall, rst, tokens)
    self._rst_rate = None
    self._tok_rate = None

  def update(self, step: int, loss: float, rst_seconds: float, tokens: int, extra: str = "") -> str:
    now = time.time()
    if self._last is not None:
      dt = max(now - self._last[0], 1e-9)
      rst_rate = (rst_seconds - self._last[1]) / dt
      tok_rate = (tokens - self._last[2]) / dt
      a = 0.5 if self._rst_rate is not None else 1.0
      self._rst_rate = (
        rst_rate if self._rst_rate is None else a * rst_rate + (1 - a) * self._rst_rate
      )
      self._tok_rate = (
        tok_rate if self._tok_rate is None else a * tok_rate + (1 - a) * self._tok_rate
      )
    self._last = (now, rst_seconds, tokens)
    eta = ((self.budget - rst_seconds) / self._rst_rate) if self._rst_rate else float("nan")
    pct = 100.0 * rst_seconds / self.budget
    line = (
      f"step {step:>7d} | loss {loss:8.4f} | RST {format_duration(rst_seconds)}"
      f" / {format_duration(self.budget)} ({pct:5.1f}%) | "
      f"{(self._tok_rate or 0):,.0f} tok/s | ETA {format_duration(eta)}{extra}"
    )
    print(line, file=self.stream or sys.stdout, flush=True)
    return line
