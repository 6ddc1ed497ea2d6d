"""Runs a grid of pre-training runs (methods × RST budgets × seeds) priced by one RST table.

  python -m launch.sweep --config=configs/bert.py:size=tiny --methods=baseline,stacking,lion \
      --budgets=0.005,0.01 --seeds=0,1 --root=sweeps/tiny
  python -m launch.sweep ... --finetune=glue --finetune_args='--tasks=rte,mrpc --epochs=1'
  python -m launch.sweep ... --dry_run        # print the commands (one line per run) and exit
  python -m launch.sweep ... --extra=--config.data.num_lines=4000 --extra=--config.train.max_steps=50

Each run is `python -m launch.pretrain ... --workdir=ROOT/<method>/budget-<B>/seed-<S>`. Re-running
the same command skips complete runs and resumes the others; failures are recorded in
ROOT/sweep_status.json without stopping the grid. Then: `python -m launch.report --root=ROOT`.
Exit status: 0 if every run completed (or diverged: a result), 1 if any failed, 2 for bad flags,
130 if interrupted.
"""

import sys

from absl import app, flags

from ntng_jax.experiments import commands, grid
from ntng_jax.experiments.runner import SweepInterrupted
from ntng_jax.experiments.sweep import Sweep

_CONFIG = flags.DEFINE_string(
  "config",
  "configs/bert.py:size=tiny",
  "Config file[:args] without method/seed, e.g. configs/t5.py:size=small.",
)
_METHODS = flags.DEFINE_string("methods", "baseline", "Comma-separated methods.")
_BUDGETS = flags.DEFINE_string("budgets", "0.005", "Comma-separated RST budgets in hours.")
_SEEDS = flags.DEFINE_string("seeds", "0", "Comma-separated seeds.")
_ROOT = flags.DEFINE_string("root", None, "Sweep directory (run workdirs, table, status, report).")
_FINETUNE = flags.DEFINE_string(
  "finetune",
  "",
  "Comma-separated suites to fine-tune every complete run on (e.g. glue); '' = none.",
)
_FINETUNE_ARGS = flags.DEFINE_multi_string(
  "finetune_args", [], "Flags for launch.finetune, e.g. '--tasks=rte,mrpc --epochs=1'."
)
_EXTRA = flags.DEFINE_multi_string(
  "extra", [], "Flags for every run (repeatable), e.g. --extra=--config.data.num_lines=4000."
)
_RST_TABLE = flags.DEFINE_string(
  "rst_table",
  "calibrate",
  "calibrate (once, into ROOT/rst_table.json) | paper | PATH of an existing table.",
)
_IL_PATH = flags.DEFINE_string(
  "il_path", "", "Existing IL losses for rho_loss ('' = train the IL model and extract them first)."
)
_IL_BUDGET = flags.DEFINE_float("il_budget", 0.0, "RST hours of the IL model (0 = largest budget).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print one shell command per run and exit.")
_VERBOSE = flags.DEFINE_bool(
  "verbose", False, "Echo every run's output (it is always logged under ROOT/logs/)."
)
flags.mark_flag_as_required("root")


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments {' '.join(argv[1:])}; flags take the form --name=value.")
  try:
    spec = grid.SweepSpec(
      config=_CONFIG.value,
      methods=grid.parse_list(_METHODS.value, str, "methods"),
      budgets=grid.parse_list(_BUDGETS.value, float, "budgets"),
      seeds=grid.parse_list(_SEEDS.value, int, "seeds"),
      root=_ROOT.value,
      extra=grid.split_flags(_EXTRA.value),
      finetune=grid.parse_list(_FINETUNE.value, str, "finetune") if _FINETUNE.value else (),
      finetune_args=grid.split_flags(_FINETUNE_ARGS.value),
      rst_table=_RST_TABLE.value,
      il_path=_IL_PATH.value,
      il_budget=_IL_BUDGET.value,
    )
    grid.validate(spec)
    if _DRY_RUN.value:
      print("\n".join(commands.dry_run_lines(spec)))
      return
    status = Sweep(spec, verbose=_VERBOSE.value).run()
  except grid.SweepError as e:
    _fail(str(e))
  except SweepInterrupted as e:
    print(f"Sweep interrupted during {e}; run the same command again to resume.", flush=True)
    sys.exit(130)
  failed = status.get("counts", {}).get("failed", 0) + status.get("finetune_failed", 0)
  sys.exit(1 if failed else 0)


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


if __name__ == "__main__":
  app.run(main)
