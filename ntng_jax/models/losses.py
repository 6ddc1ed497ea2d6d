"""Losses over prediction positions, apart from the logits (selection, RHO-loss, Sophia-G and
evaluation all reuse them). logits [B, T, V], labels [B, T] int, weights [B, T] float."""

from __future__ import annotations

import jax.numpy as jnp
import optax


def token_losses(logits, labels):
  """Softmax cross-entropy in float32 -> [B, T]."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def per_example_loss(logits, labels, weights):
  """Each example's weighted-mean token loss -> [B]; 0 for an example with no weight."""
  weights = weights.astype(jnp.float32)
  total = (token_losses(logits, labels) * weights).sum(-1)
  count = weights.sum(-1)
  return jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), 0.0)


def mean_token_loss(logits, labels, weights):
  """Sum of weighted token losses / max(sum of weights, 1) -> []."""
  weights = weights.astype(jnp.float32)
  return (token_losses(logits, labels) * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def token_accuracy(logits, labels, weights):
  """Weighted fraction of argmax hits / max(sum of weights, 1) -> []."""
  weights = weights.astype(jnp.float32)
  hits = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return (hits * weights).sum() / jnp.maximum(weights.sum(), 1.0)
