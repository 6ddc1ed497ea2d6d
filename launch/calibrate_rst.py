"""Times every step kind of a config on this machine and writes an RST table.

  python -m launch.calibrate_rst --config=configs/bert.py:size=small --output=rst_small.json

Use the table for every run of a comparison: `--config.rst.table=rst_small.json`.
"""

import json

from absl import flags
from ml_collections import config_flags

from launch import common

_CONFIG = config_flags.DEFINE_config_file("config", "configs/bert.py", "Config file[:args].",
                                          lock_config=True)
_OUTPUT = flags.DEFINE_string("output", "rst_table.json", "Where to write the table (JSON).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/calibration", "Scratch dir (tokenizer cache).")


def main(argv):
  del argv
  config = common.parsed_config(_CONFIG)

  def run():
    from ntng_jax import config as config_lib, data as data_lib, partitioning, rst
    from ntng_jax.train import calibrate
    config_lib.validate(config)
    mesh = partitioning.make_mesh(config.mesh)
    dataset = data_lib.build_dataset(config.data, config.model.family, config.model.vocab_size,
                                     _WORKDIR.value)
    table = calibrate.calibrate(config, mesh, lambda: next(iter(
        dataset.train_iterator(config.train.batch_size, seed=0))))
    rst.save_table(table, _OUTPUT.value)
    print(json.dumps(table.to_json(), indent=1))
    print(f"Wrote {_OUTPUT.value}.")

  common.run_cleanly(run)


if __name__ == "__main__":
  common.main(main)
