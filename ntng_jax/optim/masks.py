"""Boolean trees over parameters: which leaves are decayed, which stack layers on axis 0.

A mask spec (`BoolTree`) is None, a pytree (or prefix) of bools, or `params -> such a tree`;
`broadcast_bool_tree` resolves it. Masks from path regexes match the '/'-joined param path
(`ntng_jax.param_paths.path_str`, e.g. `params/encoder/layers/norm1/bias`).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional, Sequence, Union

import jax

from ntng_jax.errors import ConfigError
from ntng_jax.param_paths import path_str

WEIGHT_DECAY_EXCLUDE = {
  "bias": (r"(^|/)bias$",),
  "bias_and_norm": (r"(^|/)bias$", r"(?i)(^|/)[^/]*(norm|ln)[^/]*/(scale|weight)$"),
  "none": (),
}

BoolTree = Union[Any, Callable[[Any], Any]]  # pytree (or prefix) of bools, or params -> that


def broadcast_bool_tree(spec: Optional[BoolTree], params, default: bool) -> Any:
  """Resolves a mask spec to a bool tree with exactly the structure of `params`.

  spec: None (every leaf = `default`), a pytree of bools with the structure of `params` or a
  prefix of it, or a callable `params -> such a pytree`. Works for boxed (flax
  `LogicallyPartitioned`) params as long as spec is built from the same tree.
  """
  if spec is None:
    return jax.tree.map(lambda _: default, params)
  tree = spec(params) if callable(spec) else spec
  return jax.tree.map(lambda flag, sub: jax.tree.map(lambda _: bool(flag), sub), tree, params)


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
  """params -> bool tree, True = decayed (optax's mask convention): every leaf but those whose
  path matches `exclude` ('bias', 'bias_and_norm', 'none' or a list of regexes)."""
  if isinstance(exclude, str):
    if exclude not in WEIGHT_DECAY_EXCLUDE:
      raise ConfigError(
        f"optim.weight_decay_exclude must be one of {sorted(WEIGHT_DECAY_EXCLUDE)} or a "
        f"list of regexes; got {exclude!r}."
      )
    exclude = WEIGHT_DECAY_EXCLUDE[exclude]
  return path_mask(tuple(exclude), match_value=False)
