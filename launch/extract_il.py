"""Writes the irreducible-loss (IL) table that RHO-loss selects with.

  python -m launch.pretrain --config=configs/bert.py:method=il_model --workdir=runs/il
  python -m launch.extract_il --workdir=runs/il             # -> runs/il/il_losses/
  python -m launch.pretrain --config=configs/bert.py:method=rho_loss \
      --config.method.il_path=runs/il/il_losses

The work is `ntng_jax.train.il_extract.extract`; this script parses flags and prints a summary.
"""

import os

from absl import flags

from launch import common
from ntng_jax.train.il_extract import extract

_WORKDIR = flags.DEFINE_string("workdir", None, "The il_model run directory.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Output directory (default: WORKDIR/il_losses).")
_MASK_SEED = flags.DEFINE_integer("mask_seed", 0, "Seed of the fixed masks / span corruption.")
_BATCH = flags.DEFINE_integer(
  "batch_size", 0, "Sequences per scoring call (0: 4 × the run's micro-batch)."
)


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
