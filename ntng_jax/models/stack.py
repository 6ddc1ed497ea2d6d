"""The scanned layer stack shared by BERT and both T5 stacks.

Parameters of all layers are stacked along a leading axis named 'layers': layer i of a stacked
parameter is `leaf[i]`, so growing the model (stacking) concatenates along axis 0 and builds a
module with a larger `num_layers`. Skipped layers (`keep[i] = False`) run through `nn.cond` and
execute nothing.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def resolve_layer_loop(layer_loop: str, hidden_size: int) -> str:
  """'scan' (a loop over the stacked layers) or 'unroll' (the same scan fully unrolled: one
  copy of the layer per depth in the program, the parameters still stacked) for
  `model.layer_loop`; 'auto' picks what measured faster (BENCHMARKS.md, "CPU speed"): unrolled
  on CPU up to `UNROLL_MAX_HIDDEN_CPU`, the scan otherwise."""
  if layer_loop != "auto":
    return layer_loop
  if jax.devices()[0].platform == "cpu" and hidden_size <= UNROLL_MAX_HIDDEN_CPU:
    return "unroll"
  return "scan"


# Unrolled/scanned train step on the 2-core CPU (benchmarks/variants.py, near quiet): BERT small
# (D=256) 0.86, T5 small (D=256) 0.70, BERT base (D=768) 1.52.
UNROLL_MAX_HIDDEN_CPU = 256


class Block(nn.Module):
  """Base of a scannable layer. Subclasses define `setup` and `layer(x, *args) -> x`.

  `__call__(x, keep, *args) -> (x, None)` is the scan body: `keep` is None (always run) or a
  bool scalar (run `layer` under `nn.cond`, identity otherwise)."""

  cfg: Any
  dtype: Any = jnp.float32
  deterministic: bool = True
  decode_len: int = 0  # > 0: incremental decoding with a KV cache of this length (T5 decoder)

  def layer(self, x, *args):
    raise NotImplementedError

  def __call__(self, x, keep, *args):
    # Initialisation must create the parameters regardless of keep (nn.cond requires both
    # branches to create the same variables), so it always runs the layer.
    if keep is None or self.is_initializing():
      return self.layer(x, *args).astype(x.dtype), None
    y = nn.cond(
      keep, lambda m, x, *a: m.layer(x, *a).astype(x.dtype), lambda m, x, *a: x, self, x, *args
    )
    return y, None


class LayerStack(nn.Module):
  """`num_layers` copies of `block_cls` applied in sequence with `nn.scan`.

  `__call__(x [B, S, D], *broadcast, keep=None) -> [B, S, D]`; `broadcast` are the extra
  per-call arguments every layer sees (masks, position buckets, encoder output), `keep` is None
  or bool `[num_layers]`. Parameters live under '<name>/layers/...' with a leading layer axis."""

  block_cls: type[Block]
  cfg: Any
  num_layers: int
  dtype: Any = jnp.float32
  deterministic: bool = True
  decode_len: int = 0

  @nn.compact
  def __call__(self, x, *broadcast, keep=None):
    block = self.block_cls
    if self.cfg.remat:
      block = nn.remat(block, prevent_cse=False)
    if keep is not None:
      keep = jnp.asarray(keep).astype(bool)
      if keep.shape != (self.num_layers,):
        raise ValueError(f"keep must have shape ({self.num_layers},); got {keep.shape}.")
    scanned = nn.scan(
      block,
      variable_axes={"params": 0, "cache": 0},
      split_rngs={"params": True, "dropout": True},
      in_axes=(nn.broadcast if keep is None else 0,) + (nn.broadcast,) * len(broadcast),
      length=self.num_layers,
      unroll=(
        self.num_layers
        if resolve_layer_loop(self.cfg.layer_loop, self.cfg.hidden_size) == "unroll"
        else 1
      ),
      metadata_params={nn.PARTITION_NAME: "layers"},
    )
    x, _ = scanned(self.cfg, self.dtype, self.deterministic, self.decode_len, name="layers")(
      x, keep, *broadcast
    )
    return x
