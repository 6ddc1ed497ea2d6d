"""Position encodings: BERT's scaled sinusoidal table [1, S, D] and T5's relative-position
buckets [Q, K] with the per-layer learned bias table [num_buckets, H] -> [1, H, Q, K] f32."""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from ntng_jax.models.layers import Dtype, normal


def sinusoidal_table(length: int, dim: int) -> np.ndarray:
  """Fixed [length, dim] table: even columns sin(pos * w_i), odd columns cos(pos * w_i)."""
  pos = np.arange(length, dtype=np.float64)[:, None]
  freq = np.exp(np.arange(0, dim, 2, dtype=np.float64) * (-math.log(10000.0) / dim))
  table = np.zeros((length, dim), np.float32)
  table[:, 0::2] = np.sin(pos * freq)
  table[:, 1::2] = np.cos(pos * freq)[:, : dim // 2]
  return table


class ScaledSinusoidal(nn.Module):
  """Crammed-BERT positions: fixed sin/cos table times one learnable scalar (init 1/sqrt(D)).
  Returns [1, S, D] for a sequence of length S <= max_length."""

  max_length: int
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, length: int):
    if length > self.max_length:
      raise ValueError(f"sequence length {length} exceeds model.max_length {self.max_length}.")
    scale = self.param(
      "scale",
      nn.with_logical_partitioning(nn.initializers.constant(1.0 / math.sqrt(self.features)), ()),
      (),
      jnp.float32,
    )
    table = jnp.asarray(sinusoidal_table(self.max_length, self.features))[None, :length]
    return (scale * table).astype(self.dtype)


def relative_position_buckets(
  relative_position, bidirectional: bool, num_buckets: int, max_distance: int
):
  """T5 bucketing of `relative_position = key_pos - query_pos` (int array) into
  [0, num_buckets): exact for small distances, log-spaced up to max_distance. Unidirectional
  (decoder) buckets only distinguish keys at or before the query."""
  buckets = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative_position > 0).astype(relative_position.dtype) * num_buckets
    distance = jnp.abs(relative_position)
  else:
    distance = jnp.maximum(-relative_position, 0)
  max_exact = num_buckets // 2
  safe = jnp.maximum(distance, 1).astype(jnp.float32)
  large = max_exact + (
    jnp.log(safe / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
  ).astype(relative_position.dtype)
  large = jnp.minimum(large, num_buckets - 1)
  return buckets + jnp.where(distance < max_exact, distance, large)


class RelativeBias(nn.Module):
  """Per-layer learned bias table [num_buckets, H]; buckets [Q, K] int -> bias [1, H, Q, K] f32."""

  num_buckets: int
  num_heads: int
  std: float

  @nn.compact
  def __call__(self, buckets):
    table = self.param(
      "rel_embedding",
      nn.with_logical_partitioning(normal(self.std), ("relpos_buckets", "heads")),
      (self.num_buckets, self.num_heads),
      jnp.float32,
    )
    return jnp.transpose(jnp.take(table, buckets, axis=0), (2, 0, 1))[None]
