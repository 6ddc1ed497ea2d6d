"""Calibrates an RST table at chosen depths within one host's memory (over `train.calibrate`).

  python -m ntng_jax.experiments.rst_depthwise --config=configs/t5.py:size=base --output=t.json \
      [--depths=1,3,6,9,12] [--one_at_a_time]

`--depths` times only those depths, interleaved (a partial table: the trainer cannot price a
missing depth; `rst_compare` interpolates); `--one_at_a_time` builds, times and frees one depth at
a time. Merge runs with `calibrate.combine_runs`. When to use which: docs/architecture.md, "RST".
"""

from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

from ntng_jax import config as config_lib
from ntng_jax import data as data_lib
from ntng_jax import partitioning, rst
from ntng_jax.train import calibrate as calibrate_lib


def _main(argv):
  del argv
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
  config_flags.DEFINE_config_file("config", "configs/bert.py", "Config file[:args].")
  flags.DEFINE_string("output", "rst_table.json", "Where to write the table (JSON).")
  flags.DEFINE_string("workdir", "runs/calibration", "Scratch dir (tokenizer cache).")
  flags.DEFINE_string("depths", "", "Comma-separated depths to time ('' = 1..num_layers).")
  flags.DEFINE_bool("one_at_a_time", False, "Hold one depth's programs in memory at a time.")
  app.run(_main)
