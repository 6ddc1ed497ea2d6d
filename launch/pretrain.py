"""Pre-train under an RST budget.

  python -m launch.pretrain                                   # tiny BERT on the synthetic corpus
  python -m launch.pretrain --config=configs/t5.py:size=tiny --workdir=/tmp/t5
  python -m launch.pretrain --config=configs/bert.py:size=base --config.data.source=text \
      --config.data.path=corpus.txt --config.train.budget_hours=24

Extra validation sets: --config.data.validation.NAME=SOURCE (a text file, a shards directory or
tfds:NAME[:SPLIT]); every set is evaluated at full depth and logged as validation_loss/NAME.

Re-running the same command on the same workdir resumes from its last checkpoint.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from launch import common

_CONFIG = config_flags.DEFINE_config_file("config", "configs/bert.py", "Config file[:args].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: runs/<family>-<size>-"
                               "<method>-seed<seed>).")


def main(argv):
  del argv
  config = common.parsed_config(_CONFIG)
  workdir = _WORKDIR.value or common.default_workdir(config)
  from ntng_jax.train.loop import train_and_evaluate
  summary = common.run_cleanly(lambda: train_and_evaluate(config, workdir))
  sys.exit(1 if summary.get("stopped_because") == "nan" else 0)


if __name__ == "__main__":
  common.main(main)
