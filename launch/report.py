"""Writes the report of a sweep: ROOT/report.md (paper-style tables), report.json and figures.

  python -m launch.report --root=sweeps/tiny
  python -m launch.report --root=sweeps/tiny --baseline=baseline --nofigures

For a gpt (causal LM) sweep the tables add validation perplexity instead of fine-tuning scores,
and a sweep whose data repeated (`data.unique_tokens`) gets validation loss against epochs.
Reads what the runs wrote (summary.json, metrics.jsonl, finetune/<suite>.json) and
ROOT/sweep_status.json (failures); see ntng_jax/experiments/report.py. Figures need matplotlib
(`pip install -e ".[plots]"`).
"""

import os
import sys

from absl import app, flags

from ntng_jax.experiments import tables
from ntng_jax.experiments.report import write_report

_ROOT = flags.DEFINE_string("root", None, "Sweep directory (as passed to launch.sweep).")
_BASELINE = flags.DEFINE_string("baseline", "baseline", "Method the Δ columns compare against.")
_FIGURES = flags.DEFINE_bool("figures", True, "Draw the PNG figures.")
flags.mark_flag_as_required("root")


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments {' '.join(argv[1:])}; flags take the form --name=value.")
  if not os.path.isdir(_ROOT.value):
    _fail(f"--root={_ROOT.value!r} is not a directory; pass the --root of a sweep.")
  result = write_report(_ROOT.value, _BASELINE.value, _FIGURES.value)
  agg = result["aggregate"]
  if not result["collected"]["runs"]:
    _fail(
      f"no runs under {_ROOT.value} (expected <method>/budget-<B>/seed-<S>/ directories or"
      " sweep_status.json)."
    )
  for name in ("train_loss", "validation_loss", "perplexity"):  # perplexity: gpt runs
    if name in agg["metric_names"]:
      print(f"{tables.title(name)}:")
      print("\n".join(tables.metric_table(agg, name)))
      print()
  print(
    f"Wrote {result['markdown']}, {result['json']}"
    + "".join(f", {p}" for p in result["figures"].values())
    + "."
  )


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


if __name__ == "__main__":
  app.run(main)
