"""Calibrates an RST table at chosen depths, within a host's memory.

`ntng_jax.train.calibrate.calibrate` builds the programs and state of every depth 1..L up front
and times them in interleaved rounds; for base models on a small-memory host (BERT base: 16
states with AdamW moments, ~16 GB; base T5 more) that does not fit. This variant times only
`--depths` (interleaved together, so machine noise hits every entry alike), or with
`--one_at_a_time` builds, times and frees each depth in turn (train and forward of one depth
interleaved; noise is then shared within a depth but not across depths). Same programs, units and
table format as `calibrate.calibrate`; runs are merged with `calibrate.combine_runs`.

  python -m ntng_jax.experiments.rst_depthwise --config=configs/t5.py:size=base --output=t.json \
      [--depths=1,3,6,9,12]

With `--depths` only those depths are timed (a partial table: the loop cannot price the missing
depths; `ntng_jax.experiments.rst_compare` interpolates between them).
"""

from __future__ import annotations

import gc
import json

import jax
import numpy as np

from ntng_jax import partitioning, rst
from ntng_jax.optim import build_optimizer
from ntng_jax.train import calibrate as calibrate_lib
from ntng_jax.train import step as step_lib


def calibrate_depthwise(config, mesh, example_batch_fn, depths=None, one_at_a_time=False,
                        log=print) -> rst.RSTTable:
  """Times `train[n]` and `forward[n]` for each n in `depths` (default 1..num_layers), all
  depths in interleaved rounds, or (`one_at_a_time`) each depth built, timed and freed in turn."""
  from ntng_jax.train import loop

  t, L = config.train, int(config.model.num_layers)
  depths = list(depths or range(1, L + 1))
  num_micro = t.batch_size // t.micro_batch_size
  tx = build_optimizer(config.optim)
  batch_np = example_batch_fn()
  micro_np = {k: v[:t.micro_batch_size] for k, v in batch_np.items()}
  batch = partitioning.global_batch(mesh, batch_np)
  micro = partitioning.global_batch(mesh, micro_np)
  rng = jax.random.PRNGKey(0)
  controls = {"learning_rate": np.float32(0.0)}
  train, forward = {}, {}

  def programs(n):
    built = loop.build_programs(config, loop.model_at_depth(config, n), tx, mesh, micro_np)
    box = {"state": loop.init_state(built, tx, mesh, micro_np, seed=0)}
    score = jax.jit(step_lib.make_score_step(built.model, t.compute_dtype),
                    in_shardings=(built.shardings.params, partitioning.batch_sharding(mesh)))

    def train_fn():
      box["state"], metrics = built.train_step(box["state"], batch, rng, controls)
      return metrics
    return {("train", n): train_fn, ("forward", n): lambda: score(box["state"].params, micro)}

  def time_group(group):
    fns = {}
    for n in group:
      fns.update(programs(n))
    with partitioning.activate(mesh):
      seconds = calibrate_lib._interleaved_medians(fns, int(config.rst.warmup),
                                                   int(config.rst.repeats))
    for n in group:
      train[n], forward[n] = seconds[("train", n)] / num_micro, seconds[("forward", n)]
      log(f"depth {n}: train {train[n]:.4f} s/unit, forward {forward[n]:.4f} s/unit")
    fns.clear()
    gc.collect()

  for group in ([[n] for n in depths] if one_at_a_time else [depths]):
    time_group(group)
  return calibrate_lib.table_from_timings(
      config, train, forward, warmup=int(config.rst.warmup), depths=list(depths),
      batch_size=int(t.batch_size),
      statistic="median, compile excluded; rst_depthwise"
      + (", one depth at a time" if one_at_a_time else ", depths interleaved"))


def _main(argv):
  del argv
  from absl import flags
  from ntng_jax import config as config_lib, data as data_lib
  f = flags.FLAGS
  config = f.config
  config_lib.validate(config)
  mesh = partitioning.make_mesh(config.mesh)
  dataset = data_lib.build_dataset(config.data, config.model.family, config.model.vocab_size,
                                   f.workdir)
  depths = [int(d) for d in f.depths.split(",")] if f.depths else None
  table = calibrate_depthwise(config, mesh, lambda: next(iter(
      dataset.train_iterator(config.train.batch_size, seed=0))), depths=depths,
      one_at_a_time=f.one_at_a_time,
      log=lambda s: print(s, flush=True))
  rst.save_table(table, f.output)
  print(json.dumps(table.to_json(), indent=1))
  print(f"Wrote {f.output}.")


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", "configs/bert.py", "Config file[:args].")
  flags.DEFINE_string("output", "rst_table.json", "Where to write the table (JSON).")
  flags.DEFINE_string("workdir", "runs/calibration", "Scratch dir (tokenizer cache).")
  flags.DEFINE_string("depths", "", "Comma-separated depths to time ('' = 1..num_layers).")
  flags.DEFINE_bool("one_at_a_time", False, "Hold one depth's programs in memory at a time.")
  app.run(_main)
