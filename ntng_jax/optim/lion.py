"""Lion (docs/paper.md §4.5) in its two paper variants, built on `optax.scale_by_lion`.

Per step: `u = sign(b1·m + (1-b1)·g)`, `m ← b2·m + (1-b2)·g`; BERT: `p ← p·(1 - lr·wd) - lr·u`;
T5 (`scale_by_param_rms=True`): the same with lr' = lr·max(1e-3, RMS(p)) (per layer for stacked
leaves), taken before the update.
"""

from __future__ import annotations

from typing import Any, Optional

import optax

from ntng_jax.optim import adamw as _adamw
from ntng_jax.optim.masks import BoolTree


def lion(
  learning_rate: optax.ScalarOrSchedule,
  b1: float = 0.9,
  b2: float = 0.99,
  weight_decay: float = 0.0,
  mask: Optional[BoolTree] = None,
  scale_by_param_rms: bool = False,
  *,
  stacked: Optional[BoolTree] = None,
  mu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  """Lion with decoupled weight decay; `scale_by_param_rms=True` gives the paper's T5 variant.

  learning_rate: float, schedule or (via `optax.inject_hyperparams`) a traced scalar.
  mask: which leaves are decayed (True = decay; pytree, prefix or callable of params).
  stacked: leaves whose axis 0 stacks layers (RMS per layer slice); only used with RMS scaling.
  mu_dtype: dtype of the momentum (None: that of the params).
  """
  txs = [
    optax.scale_by_lion(b1=b1, b2=b2, mu_dtype=mu_dtype),
    optax.add_decayed_weights(weight_decay, mask),
  ]
  if scale_by_param_rms:
    txs.append(_adamw.scale_by_param_rms(1e-3, stacked))
  txs.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*txs)
