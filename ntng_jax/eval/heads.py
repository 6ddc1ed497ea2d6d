"""Fine-tuning head and loss for GLUE/SuperGLUE (docs/paper.md §5, the crammed-BERT head).

``ClassificationHead``: hidden states ``[B, S, D]`` -> first-token pooling ``[B, D]`` ->
Dense ``hidden`` (1024) -> tanh -> dropout (0.1) -> Dense ``num_classes`` -> logits
``[B, num_classes]`` (``[B, 1]`` for regression). Kernels are initialised N(0, 0.02) and
biases 0, as the original ``_init_weights``.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import optax

__all__ = ["ClassificationHead", "classification_loss", "predictions_from_logits"]


class ClassificationHead(nn.Module):
  """Pooler + classifier on encoder hidden states.

  Call: ``head.apply(params, hidden_states [B, S, D], deterministic=True,
  rngs={'dropout': key})`` -> ``logits [B, num_classes] float32``.
  """

  num_classes: int
  hidden: int = 1024
  dropout_rate: float = 0.1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden_states: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
    init = nn.initializers.normal(stddev=0.02)
    x = hidden_states[:, 0]  # first-token (<cls>) pooling: [B, D]
    x = nn.Dense(self.hidden, kernel_init=init, dtype=self.dtype, name="pooler")(x)
    x = jnp.tanh(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    x = nn.Dense(self.num_classes, kernel_init=init, dtype=self.dtype, name="classifier")(x)
    return x.astype(jnp.float32)


def classification_loss(
  logits: jnp.ndarray, labels: jnp.ndarray, num_classes: int, weights: jnp.ndarray | None = None
) -> jnp.ndarray:
  """Mean loss over the batch (a scalar).

  ``logits [B, C]``; ``labels [B]`` int class ids (cross-entropy) or, when
  ``num_classes == 1``, float targets (mean squared error on ``logits[:, 0]``).
  ``weights [B]`` (optional, e.g. ``example_mask``) give a weighted mean.
  """
  logits = logits.astype(jnp.float32)
  if num_classes == 1:
    per_example = jnp.square(logits[:, 0] - labels.astype(jnp.float32))
  else:
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  if weights is None:
    return per_example.mean()
  weights = weights.astype(jnp.float32)
  return (per_example * weights).sum() / jnp.maximum(weights.sum(), 1e-9)


def predictions_from_logits(logits: jnp.ndarray, num_classes: int) -> jnp.ndarray:
  """``[B]`` predictions: argmax class ids, or the regression value ``logits[:, 0]``."""
  return logits[:, 0] if num_classes == 1 else jnp.argmax(logits, axis=-1)
