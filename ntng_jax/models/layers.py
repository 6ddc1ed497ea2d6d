"""Building blocks shared by BERT and T5.

Conventions: `B` batch, `S`/`Q`/`K` lengths, `D` hidden size, `H` heads, `Dh` head dim, `F` MLP
width, `V` vocab. Every module computes in `dtype` (default float32) and keeps its parameters in
float32; softmax and norms run in float32. Every parameter carries logical axis names
('vocab', 'embed', 'qkv', 'heads', 'kv', 'mlp', 'relpos_buckets'; the scan adds 'layers').
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
NEG_INF = -1e9  # additive mask value; finite so fully masked rows stay NaN-free


def normal(std: float):
  return jax.nn.initializers.normal(stddev=std)


def constrain(x, names: Sequence[str | None]):
  """Logical sharding constraint on an activation; a no-op without axis rules."""
  return nn.with_logical_constraint(x, tuple(names))


class Dense(nn.Module):
  """Bias-free dense layer contracting the last `in_dims` axes of x with a kernel
  `[*x.shape[-in_dims:], *features]` whose axes are named `axes`."""

  features: int | Sequence[int]
  axes: Sequence[str | None]
  std: float
  in_dims: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    shape = tuple(x.shape[-self.in_dims :]) + features
    kernel = self.param(
      "kernel", nn.with_logical_partitioning(normal(self.std), tuple(self.axes)), shape, jnp.float32
    )
    return flat_dot(x.astype(self.dtype), kernel.astype(self.dtype), self.in_dims)


def flat_dot(x, kernel, in_dims: int = 1):
  """x [*lead, *in] · kernel [*in, *out] -> [*lead, *out], the leading axes merged into one for
  the product. With one merged axis the weight gradient is a single-contraction dot, which XLA
  CPU runs without a transposed copy of the output gradient (BENCHMARKS.md, "CPU speed")."""
  lead, inner = x.shape[: x.ndim - in_dims], x.shape[x.ndim - in_dims :]
  x = x.reshape((-1,) + inner)
  contract = (tuple(range(1, in_dims + 1)), tuple(range(in_dims)))
  y = jax.lax.dot_general(x, kernel, (contract, ((), ())))
  return y.reshape(lead + kernel.shape[in_dims:])


class Embed(nn.Module):
  """Token embedding `[V, D]`; `attend` gives tied output logits."""

  num_embeddings: int
  features: int
  std: float
  zero_row: int | None = None  # e.g. BERT's pad id: that row starts at zero (torch padding_idx)
  dtype: Dtype = jnp.float32

  def setup(self):
    def init(key, shape, dtype):
      w = normal(self.std)(key, shape, dtype)
      return w if self.zero_row is None else w.at[self.zero_row].set(0)

    self.embedding = self.param(
      "embedding",
      nn.with_logical_partitioning(init, ("vocab", "embed")),
      (self.num_embeddings, self.features),
      jnp.float32,
    )

  def __call__(self, ids):
    """ids [B, S] int -> [B, S, D] in dtype. The lookup passes no gradient to `zero_row`
    (torch padding_idx); `attend` still does, as torch's tied decoder does."""
    x = jnp.take(self.embedding, ids, axis=0)
    if self.zero_row is not None:
      x = jnp.where((ids == self.zero_row)[..., None], jax.lax.stop_gradient(x), x)
    return x.astype(self.dtype)

  def attend(self, x):
    """x [..., D] -> logits [..., V] (in dtype)."""
    lead, d = x.shape[:-1], x.shape[-1]
    w = self.embedding.astype(self.dtype)
    y = jax.lax.dot_general(x.astype(self.dtype).reshape(-1, d), w, (((1,), (1,)), ((), ())))
    return y.reshape(lead + (w.shape[0],))  # leading axes merged: see `flat_dot`


class LayerNorm(nn.Module):
  """LayerNorm with scale and bias, computed in float32."""

  eps: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    scale = self.param(
      "scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), (d,), jnp.float32
    )
    bias = self.param(
      "bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (d,), jnp.float32
    )
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    xhat = (x - mean) * jax.lax.rsqrt(var + self.eps)
    y = xhat * broadcast_leading(scale, x.shape) + broadcast_leading(bias, x.shape)
    return y.astype(self.dtype)


class RMSNorm(nn.Module):
  """T5 layer norm: scale only, no mean subtraction, computed in float32."""

  eps: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param(
      "scale",
      nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
      (x.shape[-1],),
      jnp.float32,
    )
    x = x.astype(jnp.float32)
    y = x * jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + self.eps)
    y = y * broadcast_leading(scale, x.shape)
    return y.astype(self.dtype)


class BertMLP(nn.Module):
  """Crammed-BERT GELU-GLU: D -> F (halves x, gate) -> erf-GELU(gate) * x -> F/2 -> D.

  The first kernel is `[D, 2, F/2]` (same parameters as torch's D->F Linear, first half = x)
  so that the split never crosses a tensor-parallel shard of 'mlp'."""

  intermediate_size: int
  std: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d, half = x.shape[-1], self.intermediate_size // 2
    h = Dense((2, half), ("embed", None, "mlp"), self.std, dtype=self.dtype, name="wi")(x)
    h = constrain(h, ("act_batch", "act_length", None, "act_mlp"))
    y = nn.gelu(h[..., 1, :], approximate=False) * h[..., 0, :]
    return Dense(d, ("mlp", "embed"), self.std, dtype=self.dtype, name="wo")(y)


class T5MLP(nn.Module):
  """T5 v1.1 gated GELU: wo(gelu_tanh(wi_0 x) * wi_1 x); x [..., D] -> [..., D]."""

  d_ff: int
  wi_std: float
  wo_std: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    gate = Dense(self.d_ff, ("embed", "mlp"), self.wi_std, dtype=self.dtype, name="wi_0")(x)
    lin = Dense(self.d_ff, ("embed", "mlp"), self.wi_std, dtype=self.dtype, name="wi_1")(x)
    h = constrain(nn.gelu(gate, approximate=True) * lin, ("act_batch", "act_length", "act_mlp"))
    return Dense(d, ("mlp", "embed"), self.wo_std, dtype=self.dtype, name="wo")(h)


def dot_product_attention(
  q, k, v, bias=None, scale: float = 1.0, dtype: Dtype = jnp.float32, dropout=None
):
  """q [B, Q, H, Dh], k/v [B, K, H, Dh], bias broadcastable to [B, H, Q, K] (additive, f32)
  -> [B, Q, H, Dh] in dtype. Softmax in float32; `dropout` (None or a function) is applied to
  the probabilities."""
  scores = jnp.einsum("bqhd,bkhd->bhqk", q.astype(dtype), k.astype(dtype)).astype(jnp.float32)
  scores = scores * scale
  if bias is not None:
    scores = scores + bias
  probs = jax.nn.softmax(scores, axis=-1)
  if dropout is not None:
    probs = dropout(probs)
  return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(dtype), v.astype(dtype))


def broadcast_leading(x, shape: tuple[int, ...]):
  """x (its size that of the trailing axes of `shape`, e.g. a norm scale [D] or T5's position
  bias [1, H, Q, K]) broadcast to `shape`. Its gradient sums the leading axes as a product with
  a vector of ones: XLA CPU's reduction over leading axes measured ~20x slower (BENCHMARKS.md,
  "CPU speed")."""
  return _broadcast_leading(x, tuple(x.shape), tuple(shape))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _broadcast_leading(x, x_shape, shape):
  return jnp.broadcast_to(x, shape)


def _broadcast_leading_fwd(x, x_shape, shape):
  return jnp.broadcast_to(x, shape), None


def _broadcast_leading_bwd(x_shape, shape, _, g):
  n = math.prod(shape) // math.prod(x_shape)
  total = jax.lax.dot_general(jnp.ones((n,), g.dtype), g.reshape(n, -1), (((0,), (0,)), ((), ())))
  return (total.reshape(x_shape),)


_broadcast_leading.defvjp(_broadcast_leading_fwd, _broadcast_leading_bwd)


def resolve_attention_impl(impl: str, dtype: Dtype) -> str:
  """The attention implementation `impl` ('auto' | 'einsum' | 'xla' | 'cudnn') stands for here.

  'auto' picks by platform: cuDNN's fused kernel on NVIDIA GPUs when computing in 16 bits
  (it has no float32 kernel), XLA's `jax.nn.dot_product_attention` on other GPUs/TPUs, and the
  einsum path on CPU, where it measured fastest (BENCHMARKS.md, "CPU speed")."""
  if impl != "auto":
    return impl
  platform = jax.devices()[0].platform
  if platform == "cpu":
    return "einsum"
  if platform == "gpu" and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    return "cudnn"
  return "xla"


def attention(
  q,
  k,
  v,
  bias=None,
  mask_bias=None,
  scale: float = 1.0,
  dtype: Dtype = jnp.float32,
  impl: str = "einsum",
  dropout=None,
):
  """Multi-head attention through the implementation `impl` (see `resolve_attention_impl`).

  q [B, Q, H, Dh], k/v [B, K, H, Dh]; `bias` a learned additive bias (T5's relative positions,
  broadcastable to [B, H, Q, K], f32) and `mask_bias` the additive 0 / NEG_INF mask (padding or
  causal) -> [B, Q, H, Dh] in dtype. 'einsum' is `dot_product_attention`; with `dropout` (which
  jax.nn.dot_product_attention lacks) every implementation takes that path."""
  impl = resolve_attention_impl(impl, dtype)
  if impl == "einsum" or dropout is not None:
    if bias is not None and bias.shape[0] == 1 < q.shape[0]:
      bias = broadcast_leading(bias, (q.shape[0],) + bias.shape[1:])
    return dot_product_attention(q, k, v, add_biases(bias, mask_bias), scale, dtype, dropout)
  q, k, v = q.astype(dtype), k.astype(dtype), v.astype(dtype)
  if impl == "xla":
    return jax.nn.dot_product_attention(
      q, k, v, bias=add_biases(bias, mask_bias), scale=scale, implementation="xla"
    )
  if impl == "cudnn":  # bias in the compute dtype; the 0 / NEG_INF mask as a boolean mask
    mask = (
      None
      if mask_bias is None
      else jnp.broadcast_to(mask_bias == 0, mask_bias.shape[:2] + (q.shape[1], k.shape[1]))
    )
    return jax.nn.dot_product_attention(
      q,
      k,
      v,
      bias=None if bias is None else bias.astype(dtype),
      mask=mask,
      scale=scale,
      implementation="cudnn",
    )
  raise ValueError(f"model.attention_impl must be one of auto, einsum, xla, cudnn; got {impl!r}.")


def probs_dropout(rate: float, deterministic: bool):
  """The `dropout` argument of `dot_product_attention` for a module: None when inactive, else a
  Flax Dropout drawing from the 'dropout' rng (call inside a compact module)."""
  if deterministic or rate == 0.0:
    return None
  return functools.partial(nn.Dropout(rate), deterministic=False)


class BertAttention(nn.Module):
  """Fused-QKV self-attention, scale 1/sqrt(Dh), no biases. x [B, S, D] -> [B, S, D].

  The QKV kernel is `[D, 3, H, Dh]`, i.e. torch's D->3D Wqkv laid out [q|k|v], heads contiguous."""

  num_heads: int
  head_dim: int
  std: float
  dtype: Dtype = jnp.float32
  dropout_rate: float = 0.0  # on the attention probabilities, when not deterministic
  deterministic: bool = True
  impl: str = "einsum"  # see `attention`

  @nn.compact
  def __call__(self, x, bias=None):
    """`bias`: the additive padding mask [B, 1, 1, S] or None."""
    qkv = Dense(
      (3, self.num_heads, self.head_dim),
      ("embed", "qkv", "heads", "kv"),
      self.std,
      dtype=self.dtype,
      name="qkv",
    )(x)
    qkv = constrain(qkv, ("act_batch", "act_length", None, "act_heads", None))
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    out = attention(
      q,
      k,
      v,
      None,
      bias,
      1.0 / math.sqrt(self.head_dim),
      self.dtype,
      self.impl,
      probs_dropout(self.dropout_rate, self.deterministic),
    )
    return Dense(
      x.shape[-1], ("heads", "kv", "embed"), self.std, in_dims=2, dtype=self.dtype, name="out"
    )(out)


class T5Attention(nn.Module):
  """T5 attention: separate q, k, v, o; no 1/sqrt(Dh) scaling; additive `bias` (position bias
  plus masks). x [B, Q, D], kv [B, K, D] -> [B, Q, D].

  With `decode_len > 0` the keys/values live in the 'cache' collection: self-attention writes
  this step's k/v at `position` into a `[B, decode_len, H, Dh]` buffer; cross-attention projects
  `kv` (the encoder output) once, on the call that creates the cache."""

  num_heads: int
  head_dim: int
  q_std: float
  kv_std: float
  o_std: float
  cross: bool = False
  decode_len: int = 0
  dtype: Dtype = jnp.float32
  dropout_rate: float = 0.0  # on the attention probabilities, when not deterministic
  deterministic: bool = True
  impl: str = "einsum"  # see `attention`

  @nn.compact
  def __call__(self, x, kv, bias=None, position=None, mask_bias=None):
    """`bias`: the relative-position bias; `mask_bias`: the additive padding/causal mask."""
    hd = (self.num_heads, self.head_dim)
    axes = ("embed", "heads", "kv")
    q = Dense(hd, axes, self.q_std, dtype=self.dtype, name="q")(x)
    k_proj = Dense(hd, axes, self.kv_std, dtype=self.dtype, name="k")
    v_proj = Dense(hd, axes, self.kv_std, dtype=self.dtype, name="v")
    if self.decode_len and self.cross:
      if self.has_variable("cache", "cross_key"):
        k = self.get_variable("cache", "cross_key")
        v = self.get_variable("cache", "cross_value")
      else:  # first decoding step: project the encoder output once
        k, v = k_proj(kv), v_proj(kv)
        self.put_variable("cache", "cross_key", k)
        self.put_variable("cache", "cross_value", v)
    elif self.decode_len:  # x is one step [B, 1, D]
      k, v = k_proj(kv), v_proj(kv)
      shape = (x.shape[0], self.decode_len) + hd
      ck = self.variable("cache", "key", jnp.zeros, shape, k.dtype)
      cv = self.variable("cache", "value", jnp.zeros, shape, v.dtype)
      ck.value = jax.lax.dynamic_update_slice_in_dim(ck.value, k, position, axis=1)
      cv.value = jax.lax.dynamic_update_slice_in_dim(cv.value, v, position, axis=1)
      k, v = ck.value, cv.value
    else:
      k, v = k_proj(kv), v_proj(kv)
    out = attention(
      q,
      k,
      v,
      bias,
      mask_bias,
      1.0,
      self.dtype,
      self.impl,
      probs_dropout(self.dropout_rate, self.deterministic),
    )
    return Dense(
      x.shape[-1], ("heads", "kv", "embed"), self.o_std, in_dims=2, dtype=self.dtype, name="o"
    )(out)


def padding_bias(mask):
  """mask [B, K] (1 = real token) or None -> additive bias [B, 1, 1, K] f32 (or None)."""
  if mask is None:
    return None
  return jnp.where(mask.astype(bool), 0.0, NEG_INF).astype(jnp.float32)[:, None, None, :]


def causal_bias(length: int):
  """[1, 1, S, S] additive bias that hides keys after each query."""
  allowed = jnp.tril(jnp.ones((length, length), bool))
  return jnp.where(allowed, 0.0, NEG_INF).astype(jnp.float32)[None, None]


def add_biases(*biases):
  """Sum of the non-None additive biases (broadcasting), or None."""
  biases = [b for b in biases if b is not None]
  if not biases:
    return None
  out = biases[0]
  for b in biases[1:]:
    out = out + b
  return out
