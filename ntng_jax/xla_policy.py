"""XLA flags chosen from the model's width, set in `XLA_FLAGS` before the JAX backend starts.

XLA reads `XLA_FLAGS` once per process, when the first backend is created, so the entry points
call `apply(hidden_size)` before anything touches a device. A flag the user already set in
`XLA_FLAGS` wins; `NTNG_XLA_POLICY=off` turns the policy off. No jax import here.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

# XLA CPU hands dot products to YNNPACK by default. Handing them to Eigen changed the step time
# (BENCHMARKS.md, "CPU speed") by 0.94x for BERT small (hidden 256), 1.01x for T5 small (256) and
# tiny BERT (64), 1.02x for BERT base and 1.05x for T5 base (768); so only the measured gain is
# taken: widths in (EIGEN_DOTS_MIN_HIDDEN, EIGEN_DOTS_MAX_HIDDEN]. Tiny models keep YNNPACK and
# their numerics. CPU-only: GPU and TPU compilers ignore the flag.
EIGEN_DOTS = "--xla_cpu_experimental_ynn_fusion_type=-dot,-individual_dot"
EIGEN_DOTS_MIN_HIDDEN = 64
EIGEN_DOTS_MAX_HIDDEN = 256

OFF_SWITCH = "NTNG_XLA_POLICY"


def flags_for(hidden_size: int) -> list[str]:
  """The flags the policy wants for a model of this width."""
  return [EIGEN_DOTS] if EIGEN_DOTS_MIN_HIDDEN < hidden_size <= EIGEN_DOTS_MAX_HIDDEN else []


def _name(flag: str) -> str:
  return flag.split("=", 1)[0]


def apply(hidden_size: int, environ: MutableMapping[str, str] = os.environ) -> list[str]:
  """Adds the policy's flags to `environ['XLA_FLAGS']` (unless switched off or already set by
  name); returns the flags it added."""
  if environ.get(OFF_SWITCH, "").lower() in ("off", "0", "false"):
    return []
  current = environ.get("XLA_FLAGS", "")
  set_names = {_name(f) for f in current.split()}
  added = [f for f in flags_for(hidden_size) if _name(f) not in set_names]
  if added:
    environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
  return added
