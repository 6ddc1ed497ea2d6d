"""The optimizer from `config.optim`, with the learning rate injected for the trainer to set.

`build_optimizer(optim_cfg)` returns `optax.inject_hyperparams(...)(learning_rate=...)` around

    chain([clip_by_global_norm(clip_norm)], <optimizer>)

so the trainer writes the per-step learning rate (a function of the RST budget fraction) into
`opt_state.hyperparams['learning_rate']` (see `ntng_jax.train.step.set_learning_rate`) and the
clip, the optimizer and the decay all see it. The result is a `GradientTransformationExtraArgs`:
`tx.update(grads, opt_state, params, **extra)`; only Sophia reads extra args (`logits_fn`,
`gnb_batch`, `gnb_rng`, see `ntng_jax.optim.sophia`), all other optimizers ignore them.

Config fields (`optim_cfg`, a ConfigDict or dict; missing or None = the default shown):

| field | meaning | default |
|---|---|---|
| name | 'adamw' (optax.adamw = torch AdamW) / 'adamw_scale' / 'lion' / 'sophia' / a user's 'module:fn' | required |
| learning_rate | peak lr; the initial injected value | required |
| b1, b2, eps | betas; eps for the Adam family and Sophia | per optimizer |
| weight_decay | decoupled decay rate | 0.0 |
| clip_norm | global L2 clip applied to the gradients first; 0 = none | 0.0 |
| weight_decay_exclude | 'bias' / 'bias_and_norm' / 'none', or a list of path regexes | 'bias' |
| scale_by_param_rms | lion/sophia: the paper's T5 lr·max(1e-3, RMS(p)) variant | False |
| stacked_params | regex of param paths whose axis 0 stacks layers (per-layer RMS, step counts) | `(^|/)layers/` |
| per_layer_step_counts | adamw/adamw_scale: a step count per stacked layer (stacking sets it) | False |
| rho, update_interval | Sophia ρ and Hessian refresh interval k | 0.04, 10 |
| batch_tokens | Sophia's paper `bs` (BERT 196608, T5 5120); None = the Hessian batch's N | None |
| refresh_at_zero | Sophia refreshes h before update 0 (BERT) or first before update k (T5) | True |
| gnb_microbatched | the Hessian batch has a leading micro-batch axis | False |
| gnb_clip_norm | clip ĝ to this L2 norm (the paper's T5 code: 1.0) | None |
| hessian_batch_fraction | Sophia: fresh micro-batches per refresh, as a fraction of a step's | 1.0 |
| free_updates | Sophia: do not charge the Hessian pass (the paper's ablation) | False |

**Weight-decay exclusion** (`weight_decay_exclude`), matched against the '/'-joined param path
(e.g. `params/encoder/layers/norm1/bias`; the flax box's `value` attribute is dropped):
* 'bias' (default) reproduces what the paper's BERT code effectively did (docs/paper.md §7 item 9):
  its no-decay keys looked for "LayerNorm" but the modules are named norm1/norm2/norm/final_norm,
  so LayerNorm *weights were decayed* and only biases (all of which are LayerNorm biases in the
  crammed BERT) were exempt; embeddings and the positional scale are decayed too.
* 'bias_and_norm': what that code intended: biases and norm scales (a leaf `scale`/`weight`
  under a module whose name contains 'norm' or 'ln') are not decayed.
* 'none': everything is decayed. A list/tuple of regexes gives a custom policy.
The T5 recipes use wd = 0, where the mask does not matter.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence, Union

import jax
import optax

from ntng_jax.optim.adamw import adamw_scale
from ntng_jax.optim.layer_count import adamw_layered
from ntng_jax.optim.lion import lion
from ntng_jax.optim.sophia import OptimizerHook, SophiaHook, sophia_g

WEIGHT_DECAY_EXCLUDE = {
  "bias": (r"(^|/)bias$",),
  "bias_and_norm": (r"(^|/)bias$", r"(?i)(^|/)[^/]*(norm|ln)[^/]*/(scale|weight)$"),
  "none": (),
}
DEFAULT_STACKED_PARAMS = r"(^|/)layers/"

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

_DEFAULTS = {  # b1, b2, eps per optimizer (docs/paper.md §3.1, §3.2, §4.5, §4.6)
  "adamw": (0.9, 0.98, 1e-12),
  "adamw_scale": (0.9, 0.999, 1e-6),
  "lion": (0.9, 0.99, None),
  "sophia": (0.965, 0.99, 1e-15),
}


def path_str(path) -> str:
  """A jax key path -> 'a/b/c' (dict keys, attribute names, sequence indices; a trailing
  flax-box `value` attribute is dropped)."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(k.name)
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    else:
      parts.append(str(k))
  if parts and parts[-1] == "value" and isinstance(path[-1], jax.tree_util.GetAttrKey):
    parts.pop()
  return "/".join(parts)


def path_mask(regexes: Sequence[str], match_value: bool) -> Callable[[Any], Any]:
  """params -> bool tree: `match_value` where any regex matches the leaf's path, else the
  negation."""
  compiled = [re.compile(r) for r in regexes]

  def fn(params):
    def leaf(path, _):
      hit = any(c.search(path_str(path)) for c in compiled)
      return match_value if hit else not match_value

    return jax.tree_util.tree_map_with_path(leaf, params)

  return fn


def weight_decay_mask(exclude: Union[str, Sequence[str]] = "bias") -> Callable[[Any], Any]:
  """params -> bool tree, True = decayed (optax's mask convention). See the module docstring."""
  if isinstance(exclude, str):
    if exclude not in WEIGHT_DECAY_EXCLUDE:
      raise ValueError(
        f"weight_decay_exclude must be one of {sorted(WEIGHT_DECAY_EXCLUDE)} or a "
        f"list of regexes; got {exclude!r}."
      )
    exclude = WEIGHT_DECAY_EXCLUDE[exclude]
  return path_mask(tuple(exclude), match_value=False)


def _get(cfg, key, default=None):
  value = cfg.get(key, None)
  return default if value is None else value


def user_optimizer(path: str) -> Callable:
  """The function at 'module:function' (`fn(learning_rate, optim_cfg) -> optax transformation`,
  wrapped like a built-in: clip first, learning rate injected); a ConfigError if it cannot be
  imported or is not callable."""
  from ntng_jax.config import ConfigError, import_named

  fn = import_named(path, "optim.name", "function", "function fn(learning_rate, optim_cfg)")
  if not callable(fn):
    raise ConfigError(
      f"optim.name {path!r} is not callable; name a function fn(learning_rate, optim_cfg)."
    )
  return fn


def build_optimizer(
  optim_cfg, learning_rate: float | None = None
) -> optax.GradientTransformationExtraArgs:
  """The optimizer described by `optim_cfg` (fields in the module docstring), lr injected.

  learning_rate: initial value of `opt_state.hyperparams['learning_rate']` (default: the peak,
  `optim_cfg.learning_rate`); the trainer overwrites it every step.
  """
  name = optim_cfg["name"]
  user = user_optimizer(name) if ":" in name else None  # a user's 'module:function'
  if name not in _DEFAULTS and user is None:
    raise ValueError(
      f"optim.name must be one of {sorted(_DEFAULTS)} or 'module:function'; got {name!r}."
    )
  d_b1, d_b2, d_eps = _DEFAULTS.get(name, (None, None, None))
  b1, b2, eps = (
    _get(optim_cfg, "b1", d_b1),
    _get(optim_cfg, "b2", d_b2),
    _get(optim_cfg, "eps", d_eps),
  )
  wd = float(_get(optim_cfg, "weight_decay", 0.0))
  mask = weight_decay_mask(_get(optim_cfg, "weight_decay_exclude", "bias"))
  stacked = path_mask((_get(optim_cfg, "stacked_params", DEFAULT_STACKED_PARAMS),), True)
  rms = bool(_get(optim_cfg, "scale_by_param_rms", False))
  clip = float(_get(optim_cfg, "clip_norm", 0.0))
  layered = bool(_get(optim_cfg, "per_layer_step_counts", False))

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
        rho=float(_get(optim_cfg, "rho", 0.04)),
        weight_decay=wd,
        update_interval=int(_get(optim_cfg, "update_interval", 10)),
        eps=eps,
        batch_tokens=_get(optim_cfg, "batch_tokens", None),
        mask=mask,
        scale_by_param_rms=rms,
        refresh_at_zero=bool(_get(optim_cfg, "refresh_at_zero", True)),
        gnb_microbatched=bool(_get(optim_cfg, "gnb_microbatched", False)),
        gnb_clip_norm=_get(optim_cfg, "gnb_clip_norm", None),
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
    hessian_batch_fraction=float(_get(optim, "hessian_batch_fraction", 1.0)),
    update_interval=int(_get(optim, "update_interval", 10)),
    refresh_at_zero=bool(_get(optim, "refresh_at_zero", True)),
    free_updates=bool(_get(optim, "free_updates", False)),
  )
