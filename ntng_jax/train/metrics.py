"""Metric records (metrics.jsonl, TensorBoard) and the console progress line.

Why not `clu.metric_writers`: importing that package imports TensorFlow unconditionally (its
SummaryWriter), which would break the light-core rule (the train loop must not import TF). We keep
clu's writer interface (`write_scalars(step, scalars)`, `flush()`, `close()`) and write TensorBoard
event files with tensorboardX when it is installed.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
import time
from typing import Mapping


class JsonlWriter:
  """Appends one JSON object per record to `path` (records are flushed at once: a killed run keeps
  everything it logged). On resume, records after `resume_step` (logged past the last checkpoint
  and about to be recomputed) are dropped so the file reads like an uninterrupted run."""

  def __init__(self, path: str, resume_step: int | None = None):
    self.path = path
    if resume_step is not None and os.path.exists(path):
      with open(path) as f:
        lines = [l for l in f if l.strip() and json.loads(l).get("step", 0) <= resume_step]
      with open(path, "w") as f:
        f.writelines(lines)
    elif resume_step is None and os.path.exists(path):
      os.remove(path)
    self._file = open(path, "a")

  def write(self, record: Mapping) -> None:
    self._file.write(json.dumps(record, sort_keys=True) + "\n")
    self._file.flush()

  def close(self) -> None:
    self._file.close()


class TensorBoardWriter:
  """Scalars to TensorBoard event files under `logdir` (a no-op without tensorboardX)."""

  def __init__(self, logdir: str):
    try:
      from tensorboardX import SummaryWriter
    except ImportError:
      self._writer = None
    else:
      self._writer = SummaryWriter(logdir)

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
      self.tb = TensorBoardWriter(os.path.join(workdir, "tensorboard"))

  def write(self, record: Mapping) -> None:
    if not self.enabled:
      return
    self.jsonl.write(record)
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
      self._rst_rate = rst_rate if self._rst_rate is None else a * rst_rate + (1 - a) * self._rst_rate
      self._tok_rate = tok_rate if self._tok_rate is None else a * tok_rate + (1 - a) * self._tok_rate
    self._last = (now, rst_seconds, tokens)
    eta = ((self.budget - rst_seconds) / self._rst_rate) if self._rst_rate else float("nan")
    pct = 100.0 * rst_seconds / self.budget
    line = (f"step {step:>7d} | loss {loss:8.4f} | RST {format_duration(rst_seconds)}"
            f" / {format_duration(self.budget)} ({pct:5.1f}%) | "
            f"{(self._tok_rate or 0):,.0f} tok/s | ETA {format_duration(eta)}{extra}")
    print(line, file=self.stream or sys.stdout, flush=True)
    return line
