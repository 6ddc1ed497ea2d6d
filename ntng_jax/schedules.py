"""Learning-rate schedules as functions of the RST budget fraction consumed (docs/paper.md §2).

Each returns a multiplier of the peak learning rate for a fraction `f` in [0, 1], so every method
sees the same learning-rate-versus-RST curve and the baseline is fully decayed at the budget end.
"""

from __future__ import annotations

import math

from ntng_jax.errors import ConfigError

# The paper quantises the fraction to a nominal horizon of "fake steps" (BERT 2,000,000; T5 65,536).
# We keep the T5 horizon because its warmup length is given in those steps; BERT's quantisation
# (5e-7 of the budget) is immaterial and omitted.
T5_HORIZON = 65_536
T5_WARMUP = 10_000
T5_FLOOR = 1e-5


def triangle(f: float) -> float:
  """BERT's budget one-cycle: 0 at the start, peak at 50 % of the budget, 0 at the end."""
  f = min(max(f, 0.0), 1.0)
  return 2.0 * f if f < 0.5 else 2.0 - 2.0 * f


def t5_cosine(f: float) -> float:
  """T5's cosine-budget: linear warmup from half the peak over 10,000/65,536 ≈ 15.3 % of the
  budget, then cosine decay to a floor of 1e-5 of the peak at the budget end."""
  step = int(min(max(f, 0.0), 1.0) * T5_HORIZON)
  if step < T5_WARMUP:
    return 0.5 + 0.5 * step / T5_WARMUP
  p = (step - T5_WARMUP) / (T5_HORIZON - T5_WARMUP)
  return max(T5_FLOOR, 0.5 * (1.0 + math.cos(math.pi * p)))


def constant(f: float) -> float:
  del f
  return 1.0


SCHEDULES = {"triangle": triangle, "t5_cosine": t5_cosine, "constant": constant}


def get(name: str):
  if name not in SCHEDULES:
    raise ConfigError(f"optim.schedule must be one of {', '.join(SCHEDULES)}; got {name!r}.")
  return SCHEDULES[name]
