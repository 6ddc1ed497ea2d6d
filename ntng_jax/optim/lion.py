"""Lion (docs/paper.md §4.5) in its two paper variants, built on `optax.scale_by_lion`.

Per step, with `g` the (clipped) gradient and `m` the momentum:

    u = sign(b1·m + (1-b1)·g);   m ← b2·m + (1-b2)·g
    BERT (scale_by_param_rms=False):  p ← p·(1 - lr·wd) - lr·u
    T5   (scale_by_param_rms=True):   lr' = lr·max(1e-3, RMS(p));  p ← p·(1 - lr'·wd) - lr'·u

RMS is over the whole tensor (per layer for stacked leaves), taken before the update; in the T5
variant the scaled lr' is also the decay rate (as in the paper's `t5/t5/utils/lion.py`).
Implemented as `chain(scale_by_lion, add_decayed_weights, [scale_by_param_rms],
scale_by_learning_rate)`, i.e. the update is `-lr·s·(u + wd·p)` with s = 1 or the RMS factor,
which is exactly the formula above.
"""

from __future__ import annotations

from typing import Any, Optional

import optax

from ntng_jax.optim import adamw as _adamw


def lion(
  learning_rate: optax.ScalarOrSchedule,
  b1: float = 0.9,
  b2: float = 0.99,
  weight_decay: float = 0.0,
  mask: Optional[_adamw.BoolTree] = None,
  scale_by_param_rms: bool = False,
  *,
  stacked: Optional[_adamw.BoolTree] = None,
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
