"""Parameter paths: 'a/b/c' strings of jax key paths, and which leaves are stacked layers.

The models stack all layers of a stack along axis 0 of every leaf under a module named 'layers'
(`ntng_jax/models/stack.py`); `is_layer_path` is the one test for such a leaf.
"""

from __future__ import annotations

import jax

LAYERS = "layers"  # the module name of a stack of layers; its leaves have axis 0 = layer
STACKED_PARAMS = r"(^|/)layers/"  # the same as a regex over `path_str` (optim.stacked_params)


def is_layer_path(path) -> bool:
  """True if a key path goes through a dict key named 'layers' (a stacked layer parameter)."""
  return any(isinstance(k, jax.tree_util.DictKey) and k.key == LAYERS for k in path)


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
