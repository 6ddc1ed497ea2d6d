"""The optimizer from `config.optim`, with the learning rate injected for the trainer to set.

`build_optimizer(optim_cfg)` returns `optax.inject_hyperparams(make)(learning_rate=...)`, `make`
being `chain(clip_by_global_norm(clip_norm), <optimizer>)` (no clip when clip_norm = 0); the
trainer writes each step's rate into `opt_state.hyperparams['learning_rate']`. The result takes
`tx.update(grads, opt_state, params, **extra)` (only Sophia reads extra args). `optimizer_hook`
is what the optimizer needs from the trainer (`OptimizerHook`). Config fields, their defaults and
the weight-decay exclusion policies: docs/implementation-notes.md, "The optimizer builder".
"""

from __future__ import annotations

import optax

from ntng_jax import registry
from ntng_jax.errors import ConfigError
from ntng_jax.optim.adamw import adamw_scale
from ntng_jax.optim.layer_count import adamw_layered
from ntng_jax.optim.lion import lion
from ntng_jax.optim.masks import path_mask, weight_decay_mask
from ntng_jax.optim.sophia import OptimizerHook, SophiaHook, sophia_g
from ntng_jax.param_paths import STACKED_PARAMS

# The paper's optimizer settings (docs/paper.md §3.1, §3.2, §4.5, §4.6), to merge into
# `config.optim`. Lion's BERT lr/wd and Sophia's BERT ρ/lr/wd are the code's yaml defaults (the
# values the paper used are UNCONFIRMED). Sophia's Hessian batch, drawn fresh from the data stream on
# refresh steps: BERT 6 x 128 sequences (half of a step's 12 micro-batches), T5 one full 2 x 72
# batch, both passed with a leading micro-batch axis (gnb_microbatched=True).
PAPER_RECIPES = {
  "bert": {
    "adamw": dict(
      name="adamw",
      learning_rate=1e-3,
      b1=0.9,
      b2=0.98,
      eps=1e-12,
      weight_decay=0.01,
      clip_norm=0.5,
      weight_decay_exclude="bias",
    ),
    "lion": dict(
      name="lion",
      learning_rate=1e-4,
      b1=0.9,
      b2=0.99,
      weight_decay=0.1,
      clip_norm=0.5,
      weight_decay_exclude="bias",
    ),
    "sophia": dict(
      name="sophia",
      learning_rate=1e-3,
      b1=0.965,
      b2=0.99,
      rho=0.04,
      weight_decay=0.01,
      clip_norm=0.5,
      weight_decay_exclude="bias",
      update_interval=10,
      batch_tokens=196608,
      refresh_at_zero=True,
      gnb_microbatched=True,
      hessian_batch_fraction=0.5,
      free_updates=False,
    ),
  },
  "t5": {
    "adamw_scale": dict(
      name="adamw_scale",
      learning_rate=2e-2,
      b1=0.9,
      b2=0.999,
      eps=1e-6,
      weight_decay=0.0,
      clip_norm=1.0,
    ),
    "lion": dict(
      name="lion",
      learning_rate=7.5e-4,
      b1=0.9,
      b2=0.99,
      weight_decay=0.0,
      clip_norm=1.0,
      scale_by_param_rms=True,
    ),
    "sophia": dict(
      name="sophia",
      learning_rate=1e-3,
      b1=0.965,
      b2=0.99,
      rho=1e-2,
      weight_decay=0.0,
      clip_norm=1.0,
      scale_by_param_rms=True,
      update_interval=10,
      batch_tokens=5120,
      refresh_at_zero=False,
      gnb_microbatched=True,
      gnb_clip_norm=1.0,
      hessian_batch_fraction=1.0,
      free_updates=False,
    ),
  },
}

_BETAS_EPS = {  # b1, b2, eps per optimizer (docs/paper.md §3.1, §3.2, §4.5, §4.6)
  "adamw": (0.9, 0.98, 1e-12),
  "adamw_scale": (0.9, 0.999, 1e-6),
  "lion": (0.9, 0.99, None),
  "sophia": (0.965, 0.99, 1e-15),
}


# Fields `optim_cfg` may leave out (or set to None), and their values then; b1, b2, eps default
# per optimizer (`_BETAS_EPS`).
FIELD_DEFAULTS = {
  "weight_decay": 0.0,
  "weight_decay_exclude": "bias",
  "stacked_params": STACKED_PARAMS,
  "scale_by_param_rms": False,
  "clip_norm": 0.0,
  "per_layer_step_counts": False,
  "rho": 0.04,
  "update_interval": 10,
  "batch_tokens": None,
  "refresh_at_zero": True,
  "gnb_microbatched": False,
  "gnb_clip_norm": None,
  "hessian_batch_fraction": 1.0,
  "free_updates": False,
}


def _get(cfg, key, default=None):
  """`cfg[key]`, or its default (`FIELD_DEFAULTS`, else `default`) when absent or None."""
  value = cfg.get(key, None)
  if value is not None:
    return value
  return FIELD_DEFAULTS.get(key, default)


def build_optimizer(
  optim_cfg, learning_rate: float | None = None
) -> optax.GradientTransformationExtraArgs:
  """The optimizer described by `optim_cfg` (fields in the module docstring), lr injected.

  learning_rate: initial value of `opt_state.hyperparams['learning_rate']` (default: the peak,
  `optim_cfg.learning_rate`); the trainer overwrites it every step.
  """
  name = optim_cfg["name"]
  user = registry.user_optimizer(name) if registry.is_import_path(name) else None
  if name not in registry.OPTIMIZERS and user is None:
    raise ConfigError(
      f"optim.name must be one of {', '.join(registry.OPTIMIZERS)} or 'module:function';"
      f" got {name!r}."
    )
  d_b1, d_b2, d_eps = _BETAS_EPS.get(name, (None, None, None))
  b1, b2, eps = (
    _get(optim_cfg, "b1", d_b1),
    _get(optim_cfg, "b2", d_b2),
    _get(optim_cfg, "eps", d_eps),
  )
  wd = float(_get(optim_cfg, "weight_decay"))
  mask = weight_decay_mask(_get(optim_cfg, "weight_decay_exclude"))
  stacked = path_mask((_get(optim_cfg, "stacked_params"),), True)
  rms = bool(_get(optim_cfg, "scale_by_param_rms"))
  clip = float(_get(optim_cfg, "clip_norm"))
  layered = bool(_get(optim_cfg, "per_layer_step_counts"))

  def make(learning_rate):
    if user is not None:
      opt = user(learning_rate, optim_cfg)
    elif name == "adamw":
      if layered:
        opt = adamw_layered(
          learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=wd, mask=mask, stacked=stacked
        )
      else:
        opt = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=wd, mask=mask)
    elif name == "adamw_scale":
      opt = adamw_scale(
        learning_rate, b1, b2, eps, wd, mask, stacked=stacked, per_layer_counts=layered
      )
    elif name == "lion":
      opt = lion(learning_rate, b1, b2, wd, mask, rms, stacked=stacked)
    else:
      opt = sophia_g(
        learning_rate,
        b1,
        b2,
        rho=float(_get(optim_cfg, "rho")),
        weight_decay=wd,
        update_interval=int(_get(optim_cfg, "update_interval")),
        eps=eps,
        batch_tokens=_get(optim_cfg, "batch_tokens"),
        mask=mask,
        scale_by_param_rms=rms,
        refresh_at_zero=bool(_get(optim_cfg, "refresh_at_zero")),
        gnb_microbatched=bool(_get(optim_cfg, "gnb_microbatched")),
        gnb_clip_norm=_get(optim_cfg, "gnb_clip_norm"),
        stacked=stacked,
      )
    if clip > 0:
      return optax.chain(optax.clip_by_global_norm(clip), opt)
    return opt

  lr0 = float(optim_cfg["learning_rate"] if learning_rate is None else learning_rate)
  return optax.inject_hyperparams(make)(learning_rate=lr0)


def optimizer_hook(config) -> OptimizerHook:
  """What the optimizer of `config` (full run config) needs from the trainer: extra data, RST
  charges, update arguments (see `ntng_jax.optim.sophia.OptimizerHook`)."""
  optim, t = config.optim, config.train
  if optim["name"] != "sophia":
    return OptimizerHook(optim["name"])
  return SophiaHook(
    num_micro=int(t.batch_size) // int(t.micro_batch_size),
    micro_batch_size=int(t.micro_batch_size),
    hessian_batch_fraction=float(_get(optim, "hessian_batch_fraction")),
    update_interval=int(_get(optim, "update_interval")),
    refresh_at_zero=bool(_get(optim, "refresh_at_zero")),
    free_updates=bool(_get(optim, "free_updates")),
  )
