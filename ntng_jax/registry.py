"""Names a config may give for a method or an optimizer, and loading a user's own by import path.

`METHODS`: built-in `method.name` -> 'module:Class' of its hook object (imported on use).
`OPTIMIZER_METHODS`: method names that mean the baseline method with that paper optimizer recipe
(`configs/common.py` sets `config.optim`). `OPTIMIZERS`: built-in `optim.name`s. Any other name
of the form 'pkg.module:attr' is a user's object, loaded by `import_named`.
"""

from __future__ import annotations

import importlib
from typing import Callable

from ntng_jax.errors import ConfigError

OPTIMIZERS = ("adamw", "adamw_scale", "lion", "sophia")
OPTIMIZER_METHODS = ("lion", "sophia")  # method=lion: baseline hooks, config.optim = Lion's recipe

METHODS = {
  "baseline": "ntng_jax.methods.base:Method",
  "stacking": "ntng_jax.methods.stacking:Stacking",
  "layer_drop": "ntng_jax.methods.layer_drop:LayerDrop",
  "selective_backprop": "ntng_jax.methods.selection:SelectiveBackprop",
  "rho_loss": "ntng_jax.methods.selection:RhoLoss",
  "il_model": "ntng_jax.methods.selection:ILModel",
  **{name: "ntng_jax.methods.base:Method" for name in OPTIMIZER_METHODS},
}


def is_import_path(name: str) -> bool:
  """True for a user's object given as 'pkg.module:name' rather than a built-in name."""
  return ":" in name


def import_named(path: str, field: str, kind: str, wanted: str):
  """The attribute at 'module:name' for config field `field`; a ConfigError (one sentence) if the
  path is malformed, the module cannot be imported or lacks it (`kind`: 'attribute', 'function';
  `wanted`: what to name instead)."""
  module_name, _, attr = path.partition(":")
  if not module_name or not attr:
    raise ConfigError(f"{field} {path!r} must be a registered name or 'module:name'.")
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ConfigError(
      f"{field} {path!r}: cannot import {module_name!r} ({e}); put its"
      " directory on PYTHONPATH or run from the directory that holds it."
    ) from None
  value = getattr(module, attr, None)
  if value is None:
    raise ConfigError(
      f"{field} {path!r}: module {module_name!r} has no {kind} {attr!r};"
      f" name a {wanted} defined in it."
    )
  return value


def user_optimizer(path: str) -> Callable:
  """The function at 'module:function' (`fn(learning_rate, optim_cfg) -> optax transformation`);
  a ConfigError if it cannot be imported or is not callable."""
  fn = import_named(path, "optim.name", "function", "function fn(learning_rate, optim_cfg)")
  if not callable(fn):
    raise ConfigError(
      f"optim.name {path!r} is not callable; name a function fn(learning_rate, optim_cfg)."
    )
  return fn
