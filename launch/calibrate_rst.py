"""Times every step kind of a config on this machine and writes an RST table.

  python -m launch.calibrate_rst --config=configs/bert.py:size=small --output=rst_small.json

Use the table for every run of a comparison: `--config.rst.table=rst_small.json`. On a machine
shared with other jobs, `--runs=5` keeps each entry's minimum over five calibrations (the built-in
tables of the shipped configs, ntng_jax/rst_tables/, were made that way).
"""

import dataclasses
import json
import sys
import time

from absl import flags

from launch import common

_CONFIG = common.define_config_flag()
_OUTPUT = flags.DEFINE_string("output", "rst_table.json", "Where to write the table (JSON).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/calibration", "Scratch dir (tokenizer cache).")
_RUNS = flags.DEFINE_integer(
  "runs",
  1,
  "Calibrate this many times, pausing between runs, and keep"
  " each entry's minimum over runs (use several on a shared machine).",
)
_PAUSE = flags.DEFINE_float("pause_seconds", 10.0, "Seconds between runs (with --runs > 1).")
_NAME = flags.DEFINE_string("name", "", "Table name ('' = calibrated-<platform>-<family>-<size>).")


def main(argv):
  del argv
  config = common.parsed_config(_CONFIG)

  def run():
    from ntng_jax import config as config_lib
    from ntng_jax import data as data_lib
    from ntng_jax import partitioning, rst
    from ntng_jax.train import calibrate

    config_lib.validate(config)
    if _RUNS.value < 1:
      raise config_lib.ConfigError(f"--runs must be at least 1; got {_RUNS.value}.")
    config_lib.check_workdir(_WORKDIR.value)
    mesh = partitioning.make_mesh(config.mesh)
    dataset = data_lib.build_dataset(
      config.data, config.model.family, config.model.vocab_size, _WORKDIR.value
    )
    tables = []
    for i in range(_RUNS.value):
      if i:
        time.sleep(_PAUSE.value)
      tables.append(
        calibrate.calibrate(
          config, mesh, lambda: next(iter(dataset.train_iterator(config.train.batch_size, seed=0)))
        )
      )
    table = calibrate.combine_runs(tables, _NAME.value or None)
    table = dataclasses.replace(
      table,
      meta=dict(table.meta, method="python -m launch.calibrate_rst " + " ".join(sys.argv[1:])),
    )
    rst.save_table(table, _OUTPUT.value)
    print(json.dumps(table.to_json(), indent=1))
    print(f"Wrote {_OUTPUT.value}.")

  common.run_cleanly(run)


if __name__ == "__main__":
  common.main(main)
