"""T5 v1.1 (docs/paper.md §3.2): shared input embedding, pre-RMSNorm blocks with a relative
position bias table in every self-attention block, gated-GELU MLPs, untied lm_head, Mesh-TF
initialisation; plus greedy decoding with a KV cache."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ntng_jax.models import layers as L
from ntng_jax.models import positions
from ntng_jax.models.stack import Block, LayerStack

PAD_ID = 0  # also the decoder start token
EOS_ID = 1


def _stds(c):
  """Mesh-TF init stds, each scaled by the factor c.init_std (1.0 in the paper)."""
  d, f = c.hidden_size, c.init_std
  return dict(
    embed=f,
    q=f * (d * c.head_dim) ** -0.5,
    kv=f * d**-0.5,
    o=f * d**-0.5,
    wi=f * d**-0.5,
    wo=f * c.intermediate_size**-0.5,
    rel=f * d**-0.5,
  )


class _T5Block(Block):
  def _attention(self, cross: bool):
    c, s = self.cfg, _stds(self.cfg)
    return L.T5Attention(
      c.num_heads,
      c.head_dim,
      s["q"],
      s["kv"],
      s["o"],
      cross=cross,
      decode_len=self.decode_len,
      dtype=self.dtype,
      dropout_rate=c.attention_dropout_rate,
      deterministic=self.deterministic,
      impl=c.attention_impl,
    )

  def _common_setup(self):
    c, s = self.cfg, _stds(self.cfg)
    self.self_norm = L.RMSNorm(c.layer_norm_eps, dtype=self.dtype)
    self.self_attn = self._attention(cross=False)
    self.rel_bias = positions.RelativeBias(c.relative_attention_num_buckets, c.num_heads, s["rel"])
    self.mlp_norm = L.RMSNorm(c.layer_norm_eps, dtype=self.dtype)
    self.mlp = L.T5MLP(c.intermediate_size, s["wi"], s["wo"], dtype=self.dtype)
    self.dropout = nn.Dropout(c.dropout_rate)

  def _residual(self, x, y):
    return x + self.dropout(y, deterministic=self.deterministic)


class T5EncoderBlock(_T5Block):
  """x [B, S, D]; buckets [S, S] int; mask_bias [B, 1, 1, S] or None."""

  def setup(self):
    self._common_setup()

  def layer(self, x, buckets, mask_bias):
    h = self.self_norm(x)
    x = self._residual(x, self.self_attn(h, h, self.rel_bias(buckets), mask_bias=mask_bias))
    x = self._residual(x, self.mlp(self.mlp_norm(x)))
    return L.constrain(x, ("act_batch", "act_length", "act_embed"))


class T5DecoderBlock(_T5Block):
  """x [B, St, D] ([B, 1, D] when decoding); buckets [St, St] ([1, decode_len]); self_bias
  causal mask; encoded [B, Si, D]; cross_bias [B, 1, 1, Si] or None; position: decode step."""

  def setup(self):
    self._common_setup()
    self.cross_norm = L.RMSNorm(self.cfg.layer_norm_eps, dtype=self.dtype)
    self.cross_attn = self._attention(cross=True)  # no position bias

  def layer(self, x, buckets, self_bias, encoded, cross_bias, position):
    h = self.self_norm(x)
    x = self._residual(
      x, self.self_attn(h, h, self.rel_bias(buckets), position, mask_bias=self_bias)
    )
    x = self._residual(x, self.cross_attn(self.cross_norm(x), encoded, mask_bias=cross_bias))
    x = self._residual(x, self.mlp(self.mlp_norm(x)))
    return L.constrain(x, ("act_batch", "act_length", "act_embed"))


class T5Stack(nn.Module):
  """Encoder or decoder: dropout -> scanned blocks -> final RMSNorm -> dropout.

  `__call__(x [B, S, D] embedded, mask=None, encoded=None, encoder_mask=None, keep=None,
  position=None) -> [B, S, D]`; `mask` is the encoder padding mask [B, S]."""

  cfg: Any
  decoder: bool
  dtype: Any = jnp.float32
  deterministic: bool = True
  decode_len: int = 0

  def setup(self):
    c = self.cfg
    block = T5DecoderBlock if self.decoder else T5EncoderBlock
    self.blocks = LayerStack(
      block, c, c.num_layers, self.dtype, self.deterministic, self.decode_len
    )
    self.final_norm = L.RMSNorm(c.layer_norm_eps, dtype=self.dtype)
    self.dropout = nn.Dropout(c.dropout_rate)

  def _buckets(self, relative_position):
    c = self.cfg
    return positions.relative_position_buckets(
      relative_position,
      not self.decoder,
      c.relative_attention_num_buckets,
      c.relative_attention_max_distance,
    )

  def __call__(self, x, mask=None, encoded=None, encoder_mask=None, keep=None, position=None):
    x = self.dropout(x, deterministic=self.deterministic)
    if position is None:
      pos = jnp.arange(x.shape[1])
      buckets = self._buckets(pos[None, :] - pos[:, None])
    if not self.decoder:
      x = self.blocks(x, buckets, L.padding_bias(mask), keep=keep)
    else:
      if position is None:
        self_bias = L.causal_bias(x.shape[1])
      else:  # one query at `position` against the whole cache
        key_pos = jnp.arange(self.decode_len)
        buckets = self._buckets(key_pos - position)[None, :]
        self_bias = jnp.where(key_pos <= position, 0.0, L.NEG_INF)[None, None, None, :]
      x = self.blocks(
        x, buckets, self_bias, encoded, L.padding_bias(encoder_mask), position, keep=keep
      )
    return self.dropout(self.final_norm(x), deterministic=self.deterministic)


class T5(nn.Module):
  """`__call__(encoder_input_ids [B,Si], decoder_input_ids [B,St], encoder_mask=None,
  keep=None) -> logits [B, St, V] float32`. The same `keep` [L] applies to both stacks."""

  cfg: Any
  dtype: Any = jnp.float32
  deterministic: bool = True
  decode_len: int = 0  # > 0: `decode(..., position=i)` runs one step against a KV cache

  def setup(self):
    c, s = self.cfg, _stds(self.cfg)
    self.token_embed = L.Embed(c.vocab_size, c.hidden_size, s["embed"], dtype=self.dtype)
    self.encoder = T5Stack(c, False, self.dtype, self.deterministic)
    self.decoder = T5Stack(c, True, self.dtype, self.deterministic, self.decode_len)
    self.lm_head = L.Dense(c.vocab_size, ("embed", "vocab"), s["embed"], dtype=self.dtype)

  def _embed(self, ids):
    return L.constrain(self.token_embed(ids), ("act_batch", "act_length", "act_embed"))

  def encode(self, encoder_input_ids, encoder_mask=None, keep=None):
    """-> encoder output [B, Si, D]."""
    return self.encoder(self._embed(encoder_input_ids), mask=encoder_mask, keep=keep)

  def decode(self, decoder_input_ids, encoded, encoder_mask=None, keep=None, position=None):
    """decoder_input_ids [B, St] (or [B, 1] at step `position` with a cache) -> [B, St, V] f32."""
    h = self.decoder(
      self._embed(decoder_input_ids),
      encoded=encoded,
      encoder_mask=encoder_mask,
      keep=keep,
      position=position,
    )
    logits = self.lm_head(h).astype(jnp.float32)
    return L.constrain(logits, ("act_batch", "act_length", "act_vocab"))

  def __call__(self, encoder_input_ids, decoder_input_ids, encoder_mask=None, keep=None):
    encoded = self.encode(encoder_input_ids, encoder_mask, keep)
    return self.decode(decoder_input_ids, encoded, encoder_mask, keep)


def greedy_decode(
  model,
  params,
  encoder_input_ids,
  max_decode_len: int,
  encoder_mask=None,
  use_cache: bool = True,
  dtype=jnp.float32,
):
  """Greedy decoding: -> [B, max_decode_len] int32 generated ids (the start token excluded).

  `model` is a T5 `LanguageModel` (or anything with a `.module` T5); `params` boxed or not.
  Decoding starts from PAD_ID; after a sequence emits EOS_ID its remaining ids are PAD_ID and
  the loop ends once every sequence is done. With `use_cache` each step runs the decoder on
  one token against a KV cache; otherwise it re-runs the decoder on the whole prefix (slow,
  the reference for the cache). Jit-friendly with `max_decode_len` (and `use_cache`) static."""
  params = nn.unbox(params)
  module = model.module.clone(
    dtype=dtype, deterministic=True, decode_len=max_decode_len if use_cache else 0
  )
  encoded = module.apply({"params": params}, encoder_input_ids, encoder_mask, method=T5.encode)
  batch = encoder_input_ids.shape[0]

  def next_logits(cache, out, i):
    if use_cache:
      prev = jax.lax.dynamic_index_in_dim(out, jnp.maximum(i - 1, 0), axis=1)  # [B, 1]
      token = jnp.where(i == 0, PAD_ID, prev)
      variables = {"params": params} if cache is None else {"params": params, "cache": cache}
      logits, state = module.apply(
        variables, token, encoded, encoder_mask, position=i, method=T5.decode, mutable=["cache"]
      )
      return logits[:, 0], state["cache"]
    inputs = jnp.pad(out[:, :-1], ((0, 0), (1, 0)), constant_values=PAD_ID)  # shift right
    logits = module.apply({"params": params}, inputs, encoded, encoder_mask, method=T5.decode)
    return jax.lax.dynamic_index_in_dim(logits, i, axis=1, keepdims=False), cache

  def step(state):
    i, out, done, cache = state
    logits, cache = next_logits(cache, out, i)
    token = jnp.where(done, PAD_ID, jnp.argmax(logits, -1).astype(jnp.int32))
    out = jax.lax.dynamic_update_index_in_dim(out, token, i, axis=1)
    return i + 1, out, done | (token == EOS_ID), cache

  out = jnp.zeros((batch, max_decode_len), jnp.int32)
  # The first step runs outside the loop: with a cache it creates the cache (loop carries
  # need a fixed structure).
  state = step((jnp.int32(0), out, jnp.zeros((batch,), bool), None))
  state = jax.lax.while_loop(lambda s: (s[0] < max_decode_len) & ~jnp.all(s[2]), step, state)
  return state[1]
