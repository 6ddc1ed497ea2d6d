"""Writes the irreducible-loss (IL) table that RHO-loss selects with.

  python -m launch.pretrain --config=configs/bert.py:method=il_model --workdir=runs/il
  python -m launch.extract_il --workdir=runs/il             # -> runs/il/il_losses/
  python -m launch.pretrain --config=configs/bert.py:method=rho_loss \
      --config.method.il_path=runs/il/il_losses

Loads the IL run's config and its newest intact checkpoint, rebuilds the run's data (the same
corpus, tokenizer and held-out split; the IL model trained on the held-out chunks), and scores
every chunk of the *main training split* once, at full depth, under one fixed mask / span
corruption (`--mask_seed`). Writes `il_losses.npy` (float32, indexed by example id = chunk index,
NaN for held-out chunks) and `il_losses.json` (format, data signature checked by RhoLoss, mask
seed, the IL run's step and RST, loss statistics).
"""

import json
import os
import time

from absl import flags

from launch import common

_WORKDIR = flags.DEFINE_string("workdir", None, "The il_model run directory.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Output directory (default: WORKDIR/il_losses).")
_MASK_SEED = flags.DEFINE_integer("mask_seed", 0, "Seed of the fixed masks / span corruption.")
_BATCH = flags.DEFINE_integer(
  "batch_size", 0, "Sequences per scoring call (0: 4 × the run's micro-batch)."
)


def load_run_config(workdir: str):
  import ml_collections

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
  """Scores the main training split with the IL run's newest checkpoint; returns the metadata."""
  import jax
  import numpy as np

  from ntng_jax import data as data_lib
  from ntng_jax import partitioning
  from ntng_jax.config import ConfigError
  from ntng_jax.methods import selection
  from ntng_jax.methods.base import build_method
  from ntng_jax.optim import build_optimizer
  from ntng_jax.train import checkpoint as ckpt_lib
  from ntng_jax.train import loop as loop_lib
  from ntng_jax.train import step as step_lib

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
      built_at[depth] = loop_lib.build_programs(
        config, loop_lib.model_at_depth(config, depth), tx, mesh, example, method
      )
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

  score = jax.jit(
    step_lib.make_score_step(built.model, config.train.compute_dtype),
    in_shardings=(built.shardings.params, partitioning.batch_sharding(mesh)),
    out_shardings=partitioning.replicated(mesh),
  )
  t0 = time.time()
  with partitioning.activate(mesh):
    train_losses = selection.score_chunks(
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
  table, meta = selection.il_table_from_losses(config, dataset, train_losses, meta)
  npy, js = selection.write_il_table(output, table, meta)
  meta["paths"] = [npy, js]
  return meta


def main(argv):
  del argv
  meta = common.run_cleanly(
    lambda: extract(_WORKDIR.value, _OUTPUT.value, _MASK_SEED.value, _BATCH.value)
  )
  s = meta["stats"]
  print(
    f"Scored {meta['num_scored']} training sequences with the IL model at step"
    f" {meta['il_run']['step']} (mean loss {s['mean']:.4f}, range {s['min']:.3f}"
    f"–{s['max']:.3f}) in {meta['seconds']:.1f} s: {meta['paths'][0]} and"
    f" {meta['paths'][1]}.",
    flush=True,
  )
  if not meta["il_run"]["finished"]:
    print(
      "note: the IL run has no summary.json (not finished); its latest checkpoint was used.",
      flush=True,
    )
  print(f"Wrote {os.path.dirname(meta['paths'][0])}.", flush=True)  # pass as method.il_path


if __name__ == "__main__":
  common.main(main, check_config=False)
