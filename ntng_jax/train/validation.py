"""Full-depth validation of a pre-training run: the fixed validation batches of every named set
(this process's rows) and the token-weighted mean loss and token accuracy over them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ntng_jax import partitioning


def validation_sets(dataset, batch_size: int, max_batches: int, nproc: int, pidx: int) -> dict:
  """{name: [batch]} with this process's rows; the dataset's named sets if it has them."""
  if hasattr(dataset, "validation_sets"):
    sets = dataset.validation_sets(batch_size, seed=0, max_batches=max_batches)
  else:
    sets = {"heldout": dataset.validation_batches(batch_size, seed=0, max_batches=max_batches)}
  share = lambda v: np.asarray(v)[pidx * (len(v) // nproc) : (pidx + 1) * (len(v) // nproc)]
  return {
    name: [{k: share(v) for k, v in b.items()} for b in batches] for name, batches in sets.items()
  }


def tokens_per_sequence(batch: dict) -> int:
  """Tokens one sequence of `batch` holds (BERT/GPT: its length; T5: inputs + targets)."""
  if "input_ids" in batch:
    return int(batch["input_ids"].shape[1])
  return int(batch["encoder_input_ids"].shape[1] + batch["targets"].shape[1])


def evaluate(built, params, batches: list[dict], mesh) -> dict:
  """Full-depth validation loss (token-weighted mean) and token accuracy over fixed batches, with
  `built.eval_step` (`train.programs.Built`)."""
  totals = None
  with partitioning.activate(mesh):
    for batch in batches:
      out = built.eval_step(params, partitioning.global_batch(mesh, batch))
      totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  totals = jax.device_get(totals)
  weight = max(float(totals["weight_sum"]), 1.0)
  return {
    "validation_loss": float(totals["loss_sum"]) / weight,
    "validation_accuracy": float(totals["correct_sum"]) / weight,
  }
