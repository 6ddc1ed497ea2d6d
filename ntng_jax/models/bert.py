"""Crammed BERT (docs/paper.md §3.1): pre-LN encoder with gated-GELU MLPs, no dense biases,
scaled sinusoidal positions, and a sparse MLM head tied to the word embedding."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ntng_jax.models import layers as L
from ntng_jax.models import positions
from ntng_jax.models.stack import Block, LayerStack

PAD_ID = 0


class BertBlock(Block):
  """Pre-LN layer: x + attn(LN(x)), then x + mlp(LN(x)). x [B, S, D], bias [B, 1, 1, S] or None."""

  def setup(self):
    c = self.cfg
    self.norm1 = L.LayerNorm(c.layer_norm_eps, dtype=self.dtype)
    self.attn = L.BertAttention(
      c.num_heads,
      c.head_dim,
      c.init_std,
      dtype=self.dtype,
      dropout_rate=c.attention_dropout_rate,
      deterministic=self.deterministic,
      impl=c.attention_impl,
    )
    self.norm2 = L.LayerNorm(c.layer_norm_eps, dtype=self.dtype)
    self.mlp = L.BertMLP(c.intermediate_size, c.init_std, dtype=self.dtype)
    self.dropout = nn.Dropout(c.dropout_rate)

  def layer(self, x, bias):
    x = x + self.dropout(self.attn(self.norm1(x), bias), deterministic=self.deterministic)
    x = x + self.dropout(self.mlp(self.norm2(x)), deterministic=self.deterministic)
    return L.constrain(x, ("act_batch", "act_length", "act_embed"))


class Bert(nn.Module):
  """`__call__(input_ids [B,S], mlm_positions [B,P], attention_mask=None, keep=None)`
  -> MLM logits [B, P, V] float32; `encode(...)` -> final hidden states [B, S, D] (dtype)."""

  cfg: Any
  dtype: Any = jnp.float32
  deterministic: bool = True

  def setup(self):
    c = self.cfg
    self.word_embed = L.Embed(
      c.vocab_size, c.hidden_size, c.init_std, zero_row=PAD_ID, dtype=self.dtype
    )
    self.position = positions.ScaledSinusoidal(c.max_length, c.hidden_size, dtype=self.dtype)
    self.embed_norm = L.LayerNorm(c.layer_norm_eps, dtype=self.dtype)
    self.dropout = nn.Dropout(c.dropout_rate)
    self.encoder = LayerStack(BertBlock, c, c.num_layers, self.dtype, self.deterministic)
    self.final_norm = L.LayerNorm(c.layer_norm_eps, dtype=self.dtype)
    # skip_head_transform: one bias-free Linear D->D before the tied decoder.
    self.head = L.Dense(c.hidden_size, ("embed", "mlp"), c.init_std, dtype=self.dtype)

  def encode(self, input_ids, attention_mask=None, keep=None):
    """input_ids [B, S] int, attention_mask [B, S] (1 = real) or None -> [B, S, D].

    Unlike the paper's FlashMHA path (which ignores it), a given attention_mask is applied."""
    x = self.word_embed(input_ids) + self.position(input_ids.shape[1])
    x = self.dropout(self.embed_norm(x), deterministic=self.deterministic)
    x = L.constrain(x, ("act_batch", "act_length", "act_embed"))
    x = self.encoder(x, L.padding_bias(attention_mask), keep=keep)
    return self.final_norm(x)

  def __call__(self, input_ids, mlm_positions, attention_mask=None, keep=None):
    h = self.encode(input_ids, attention_mask, keep)
    h = jnp.take_along_axis(h, mlm_positions[..., None].astype(jnp.int32), axis=1)  # [B, P, D]
    logits = self.word_embed.attend(self.head(h)).astype(jnp.float32)
    return L.constrain(logits, ("act_batch", "act_length", "act_vocab"))
