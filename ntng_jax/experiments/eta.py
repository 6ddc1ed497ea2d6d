"""The sweep's ETA: wall seconds still needed, fitted to the runs executed so far."""

from __future__ import annotations

import datetime
import math
from typing import Sequence


def fmt_seconds(s: float | None) -> str:
  """Seconds as H:MM:SS; '?' when unknown."""
  if s is None or not math.isfinite(s):
    return "?"
  return str(datetime.timedelta(seconds=int(round(s))))


class Eta:
  """Wall seconds still needed, from the runs executed so far: a least-squares line
  `seconds = a + b * budget_hours` once two budgets have been seen (start-up costs are the
  intercept), else seconds proportional to the budget."""

  def __init__(self):
    self.samples: list[tuple[float, float]] = []
    self.extra: dict[str, list[float]] = {}  # other steps (fine-tuning) by name

  def add(self, budget_hours: float, seconds: float) -> None:
    self.samples.append((budget_hours, seconds))

  def add_extra(self, name: str, seconds: float) -> None:
    self.extra.setdefault(name, []).append(seconds)

  def predict(self, budget_hours: float) -> float | None:
    if not self.samples:
      return None
    xs = [b for b, _ in self.samples]
    ys = [s for _, s in self.samples]
    if len(set(xs)) >= 2:
      mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
      slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
      slope = max(slope, 0.0)
      return max(my + slope * (budget_hours - mx), 0.0)
    return sum(ys) / len(ys) * budget_hours / xs[0]

  def remaining(self, budgets: Sequence[float], extras: Sequence[str] = ()) -> float | None:
    total = 0.0
    for b in budgets:
      p = self.predict(b)
      if p is None:
        return None
      total += p
    for name in extras:
      if name in self.extra:
        total += sum(self.extra[name]) / len(self.extra[name])
    return total
