"""Decoder-only causal language model (GPT-2 style) on the shared layer stack.

Pre-LN blocks x + attn(LN(x)), x + mlp(LN(x)): causal fused-QKV self-attention (scale 1/sqrt(Dh)),
a GELU MLP (tanh approximation, D -> F -> D), learned absolute positions, a final LayerNorm, logits
tied to the token embedding, no biases on dense layers. Init: every weight N(0, init_std), the two
residual output projections N(0, init_std / sqrt(2 L)). Why these choices: docs/architecture.md.

`__call__(input_ids [B, S], keep=None, position=None) -> logits [B, S, V] float32`. With
`decode_len > 0` each layer's keys/values live in the 'cache' collection ([B, decode_len, H, Dh])
and `position` (int scalar) is the index of input_ids[:, 0]: prefill at 0, then one token per call.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ntng_jax.models import layers as L
from ntng_jax.models.stack import Block, LayerStack


def _out_std(c) -> float:
  """GPT-2's scaled init of the projections that write into the residual stream."""
  return c.init_std / math.sqrt(2 * c.num_layers)


class CausalSelfAttention(nn.Module):
  """Fused QKV [D, 3, H, Dh] (BERT's layout and axis names), output [H, Dh, D]; no biases.

  `bias` is the additive mask [1, 1, S, K]; with `decode_len` the step's keys/values are written
  into the cache at `position` and attention runs against the whole cache (K = decode_len)."""

  num_heads: int
  head_dim: int
  std: float
  out_std: float
  decode_len: int = 0
  dtype: Any = jnp.float32
  dropout_rate: float = 0.0
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, bias, position=None):
    qkv = L.Dense(
      (3, self.num_heads, self.head_dim),
      ("embed", "qkv", "heads", "kv"),
      self.std,
      dtype=self.dtype,
      name="qkv",
    )(x)
    qkv = L.constrain(qkv, ("act_batch", "act_length", None, "act_heads", None))
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if self.decode_len:
      shape = (x.shape[0], self.decode_len, self.num_heads, self.head_dim)
      ck = self.variable("cache", "key", jnp.zeros, shape, k.dtype)
      cv = self.variable("cache", "value", jnp.zeros, shape, v.dtype)
      ck.value = jax.lax.dynamic_update_slice_in_dim(ck.value, k, position, axis=1)
      cv.value = jax.lax.dynamic_update_slice_in_dim(cv.value, v, position, axis=1)
      k, v = ck.value, cv.value
    out = L.dot_product_attention(
      q,
      k,
      v,
      bias,
      1.0 / math.sqrt(self.head_dim),
      self.dtype,
      L.probs_dropout(self.dropout_rate, self.deterministic),
    )
    return L.Dense(
      x.shape[-1], ("heads", "kv", "embed"), self.out_std, in_dims=2, dtype=self.dtype, name="out"
    )(out)


class GPTMLP(nn.Module):
  """D -> F, GELU (tanh approximation, as GPT-2), F -> D; no biases."""

  intermediate_size: int
  std: float
  out_std: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = L.Dense(self.intermediate_size, ("embed", "mlp"), self.std, dtype=self.dtype, name="wi")(x)
    h = L.constrain(nn.gelu(h, approximate=True), ("act_batch", "act_length", "act_mlp"))
    return L.Dense(x.shape[-1], ("mlp", "embed"), self.out_std, dtype=self.dtype, name="wo")(h)


class GPTBlock(Block):
  """x [B, S, D]; bias [1, 1, S, K] additive causal mask; position: decode offset or None."""

  def setup(self):
    c = self.cfg
    self.norm1 = L.LayerNorm(c.layer_norm_eps, dtype=self.dtype)
    self.attn = CausalSelfAttention(
      c.num_heads,
      c.head_dim,
      c.init_std,
      _out_std(c),
      decode_len=self.decode_len,
      dtype=self.dtype,
      dropout_rate=c.get("attention_dropout_rate", 0.0),
      deterministic=self.deterministic,
    )
    self.norm2 = L.LayerNorm(c.layer_norm_eps, dtype=self.dtype)
    self.mlp = GPTMLP(c.intermediate_size, c.init_std, _out_std(c), dtype=self.dtype)
    self.dropout = nn.Dropout(c.dropout_rate)

  def layer(self, x, bias, position):
    x = x + self.dropout(self.attn(self.norm1(x), bias, position), deterministic=self.deterministic)
    x = x + self.dropout(self.mlp(self.norm2(x)), deterministic=self.deterministic)
    return L.constrain(x, ("act_batch", "act_length", "act_embed"))


class GPT(nn.Module):
  """See the module docstring. Parameters: token_embed [V, D] (tied head), position
  [max_length, D], decoder/layers/... (stacked), final_norm."""

  cfg: Any
  dtype: Any = jnp.float32
  deterministic: bool = True
  decode_len: int = 0

  def setup(self):
    c = self.cfg
    self.token_embed = L.Embed(c.vocab_size, c.hidden_size, c.init_std, dtype=self.dtype)
    self.position = self.param(
      "position",
      nn.with_logical_partitioning(L.normal(c.init_std), (None, "embed")),
      (c.max_length, c.hidden_size),
      jnp.float32,
    )
    self.dropout = nn.Dropout(c.dropout_rate)
    self.decoder = LayerStack(
      GPTBlock, c, c.num_layers, self.dtype, self.deterministic, self.decode_len
    )
    self.final_norm = L.LayerNorm(c.layer_norm_eps, dtype=self.dtype)

  def hidden(self, input_ids, keep=None, position=None):
    """-> final hidden states [B, S, D] (after the final LayerNorm)."""
    length = input_ids.shape[1]
    if self.decode_len:
      start = jnp.asarray(0 if position is None else position, jnp.int32)
      if length > self.decode_len:
        raise ValueError(f"{length} tokens exceed the KV cache of {self.decode_len}.")
      pos = jax.lax.dynamic_slice_in_dim(self.position, start, length, axis=0)
      query = start + jnp.arange(length)
      allowed = jnp.arange(self.decode_len)[None, :] <= query[:, None]
      bias = jnp.where(allowed, 0.0, L.NEG_INF).astype(jnp.float32)[None, None]
      position = start
    else:
      if length > self.cfg.max_length:
        raise ValueError(
          f"sequence length {length} exceeds model.max_length {self.cfg.max_length}."
        )
      pos = self.position[:length]
      bias = L.causal_bias(length)
    x = self.token_embed(input_ids) + pos.astype(self.dtype)[None]
    x = self.dropout(x, deterministic=self.deterministic)
    x = L.constrain(x, ("act_batch", "act_length", "act_embed"))
    x = self.decoder(x, bias, position, keep=keep)
    return self.final_norm(x)

  def __call__(self, input_ids, keep=None, position=None):
    logits = self.token_embed.attend(self.hidden(input_ids, keep, position)).astype(jnp.float32)
    return L.constrain(logits, ("act_batch", "act_length", "act_vocab"))
