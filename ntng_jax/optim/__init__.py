"""Optimizers of the paper (docs/paper.md §3, §4.5, §4.6) as optax transformations.

* `adamw_scale`: T5's AdamWScale (HF AdamW with the step scaled by max(1e-3, RMS(p))).
* `lion`: Lion, BERT variant or (scale_by_param_rms=True) T5 variant.
* `sophia_g`: Sophia-G with the Gauss-Newton-Bartlett estimator (`gnb_estimate`,
  `gnb_hessian_diagonal`); `is_hessian_refresh_step` tells the RST meter when the Hessian pass ran.
* `build_optimizer`: any of these (or optax.adamw) from `config.optim`, lr injected;
  `optimizer_hook`: what it needs from the trainer (Sophia-G: a fresh Hessian batch, its charges).
"""

from ntng_jax.optim.adamw import adamw_scale, param_rms, scale_by_adam_hf, scale_by_param_rms
from ntng_jax.optim.build import PAPER_RECIPES, build_optimizer, optimizer_hook
from ntng_jax.optim.lion import lion
from ntng_jax.optim.masks import weight_decay_mask
from ntng_jax.optim.sophia import (
  OptimizerHook,
  SophiaGState,
  SophiaHook,
  gnb_estimate,
  gnb_gradient,
  gnb_hessian_diagonal,
  is_hessian_refresh_step,
  sophia_g,
)

__all__ = [
  "adamw_scale",
  "param_rms",
  "scale_by_adam_hf",
  "scale_by_param_rms",
  "PAPER_RECIPES",
  "build_optimizer",
  "optimizer_hook",
  "weight_decay_mask",
  "lion",
  "OptimizerHook",
  "SophiaGState",
  "SophiaHook",
  "gnb_estimate",
  "gnb_gradient",
  "gnb_hessian_diagonal",
  "is_hessian_refresh_step",
  "sophia_g",
]
