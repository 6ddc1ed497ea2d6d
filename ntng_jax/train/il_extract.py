"""Irreducible-loss (IL) extraction for RHO-loss: scores the main training split with an
`il_model` run's newest intact checkpoint.

Rebuilds the run's data (same corpus, tokenizer and held-out split; the IL model trained on the
held-out chunks) and scores every chunk of the training split once at full depth under one fixed
mask / span corruption (`mask_seed`). Writes the table `methods.il_table` defines: `il_losses.npy`
(float32 [chunks], NaN for held-out chunks) and `il_losses.json` (format, data signature, mask
seed, the IL run's step and RST, loss statistics).
"""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
import numpy as np

from ntng_jax import data as data_lib
from ntng_jax import partitioning
from ntng_jax.errors import ConfigError
from ntng_jax.methods import il_table
from ntng_jax.methods.base import build_method
from ntng_jax.optim import build_optimizer
from ntng_jax.train import checkpoint as ckpt_lib
from ntng_jax.train import programs


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """`workdir/config.json` of a pre-training run."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"{path} does not exist; --workdir must be a directory written by"
      " `python -m launch.pretrain --config=...:method=il_model`."
    )
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def extract(
  workdir: str, output: str | None = None, mask_seed: int = 0, batch_size: int = 0
) -> dict:
  """Scores the main training split with the IL run's newest checkpoint and writes the table to
  `output` (default `workdir/il_losses`); returns its metadata (with `paths`). `batch_size`:
  sequences per scoring call (0: 4 × the run's micro-batch)."""
  config = load_run_config(workdir)
  if config.method.name != "il_model":
    raise ConfigError(
      f"{workdir} was trained with method={config.method.name}, not il_model; its"
      " losses on the training split would not be held-out losses."
    )
  if jax.process_count() > 1:
    raise ConfigError(
      "launch.extract_il runs on one host; start it without a multi-process environment."
    )
  output = output or os.path.join(workdir, "il_losses")
  mesh = partitioning.make_mesh(config.mesh)
  # The main run's view of the data (its training split is what RHO-loss will draw from).
  dataset = data_lib.build_dataset(
    config.data, config.model.family, config.model.vocab_size, workdir
  )
  batch_size = int(batch_size or 4 * config.train.micro_batch_size)
  divisor = partitioning.batch_divisor(mesh)
  batch_size = -(-batch_size // divisor) * divisor

  tx = build_optimizer(config.optim)
  example = {
    k: np.asarray(v)
    for k, v in next(iter(dataset.train_iterator(config.train.micro_batch_size, seed=0))).items()
  }
  method = build_method(config)
  built_at = {}

  def abstract_for(loop):  # the programs of the depth saved with the checkpoint
    depth = int(loop["depth"])
    if depth not in built_at:
      built_at[depth] = programs.build_at_depth(config, depth, tx, mesh, example, method)
    return built_at[depth].abstract

  checkpointer = ckpt_lib.Checkpointer(workdir)
  try:
    restored = checkpointer.restore_latest(abstract_for)  # read-only: moves nothing aside
  finally:
    checkpointer.close()
  if restored is None:
    raise ckpt_lib.CheckpointError(f"{workdir} has no checkpoint; train the IL model first.")
  step, state, loop = restored
  built = built_at[int(loop["depth"])]
  print(
    f"Using the checkpoint of step {step} in {checkpointer.directory}, the newest intact one.",
    flush=True,
  )

  score = programs.score_program(
    built.model, config.train.compute_dtype, built.shardings.params, mesh
  )
  t0 = time.time()
  with partitioning.activate(mesh):
    train_losses = il_table.score_chunks(
      score,
      state.params,
      dataset.train_chunks,
      dataset.objective,
      batch_size,
      mask_seed,
      put=lambda b: partitioning.global_batch(mesh, b),
    )
  meta = dict(
    mask_seed=int(mask_seed),
    il_run=dict(
      workdir=os.path.abspath(workdir),
      step=int(step),
      rst_seconds=float(loop["rst_seconds"]),
      depth=int(loop["depth"]),
      finished=os.path.exists(os.path.join(workdir, "summary.json")),
      compute_dtype=config.train.compute_dtype,
    ),
    seconds=time.time() - t0,
  )
  table, meta = il_table.il_table_from_losses(config, dataset, train_losses, meta)
  npy, js = il_table.write_il_table(output, table, meta)
  meta["paths"] = [npy, js]
  return meta
