"""Calibrates an RST table at chosen depths, within a host's memory (a command over
`ntng_jax.train.calibrate.calibrate`).

By default calibration builds the programs and state of every depth 1..L up front and times
them in interleaved rounds; for base models on a small-memory host (BERT base: 16 states with
AdamW moments, ~16 GB; base T5 more) that does not fit. This command times only `--depths`
(interleaved together, so machine noise hits every entry alike), or with `--one_at_a_time`
builds, times and frees each depth in turn (train and forward of one depth interleaved; noise is
then shared within a depth but not across depths). Runs are merged with
`calibrate.combine_runs`.

  python -m ntng_jax.experiments.rst_depthwise --config=configs/t5.py:size=base --output=t.json \
      [--depths=1,3,6,9,12]

With `--depths` only those depths are timed (a partial table: the loop cannot price the missing
depths; `ntng_jax.experiments.rst_compare` interpolates between them).
"""

from __future__ import annotations

import json

from ntng_jax import partitioning, rst
from ntng_jax.train import calibrate as calibrate_lib


def _main(argv):
  del argv
  from absl import flags

  from ntng_jax import config as config_lib
  from ntng_jax import data as data_lib

  f = flags.FLAGS
  config = f.config
  config_lib.validate(config)
  mesh = partitioning.make_mesh(config.mesh)
  dataset = data_lib.build_dataset(
    config.data, config.model.family, config.model.vocab_size, f.workdir
  )
  depths = [int(d) for d in f.depths.split(",")] if f.depths else None
  table = calibrate_lib.calibrate(
    config,
    mesh,
    lambda: next(iter(dataset.train_iterator(config.train.batch_size, seed=0))),
    depths=depths,
    one_at_a_time=f.one_at_a_time,
    log=lambda s: print(s, flush=True),
  )
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
