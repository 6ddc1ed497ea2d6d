"""The report of a sweep: ROOT/report.md (tables), ROOT/report.json (the same numbers, paths
relative to the root) and the figures, from what the runs wrote (`results.collect`).

Means and standard deviations are over the runs that finished; each cell says how many seeds that
is and what happened to the others. Differences to the baseline are also paired by seed (only
seeds where both finished). Without matplotlib the report has tables only.
"""

from __future__ import annotations

import json
import os

from ntng_jax.experiments import figures as figs
from ntng_jax.experiments import report_paths, tables
from ntng_jax.experiments.results import collect
from ntng_jax.experiments.stats import aggregate


def _jsonable(agg: dict) -> dict:
  return dict(agg, groups=[dict(g) for g in agg["groups"].values()])


def write_report(root: str, baseline: str = "baseline", figures: bool = True) -> dict:
  """Writes ROOT/report.md, ROOT/report.json and the figures; returns {'markdown': path,
  'json': path, 'figures': {name: path}, 'aggregate': ...}."""
  collected = collect(root)
  agg = aggregate(collected, baseline)
  made, notes = {}, []
  if figures and collected["runs"]:
    try:
      figs.pyplot()
    except ImportError:
      notes.append("Figures skipped: matplotlib is not installed (pip install matplotlib).")
    else:
      for key, fn in (
        ("train_loss", lambda p: figs.plot_train_loss(collected, agg, p)),
        ("validation_loss", lambda p: figs.plot_validation(agg, p)),
        ("validation_rst", lambda p: figs.plot_validation_rst(collected, agg, p)),
        ("paired_delta", lambda p: figs.plot_paired_delta(agg, p)),
        ("downstream", lambda p: figs.plot_downstream(agg, p)),
        ("validation_epochs", lambda p: figs.plot_validation_epochs(collected, agg, p)),
      ):
        path = fn(os.path.join(root, f"fig_{key}.png"))
        if path:
          made[key] = path
  if baseline not in agg["methods"]:
    notes.append(f"No '{baseline}' runs: the Δ columns are empty (choose another with --baseline).")
  md_path = os.path.join(root, "report.md")
  with open(md_path, "w") as f:
    f.write(tables.render_markdown(collected, agg, made, notes))
  json_path = os.path.join(root, "report.json")
  with open(json_path, "w") as f:
    json.dump(
      dict(
        aggregate=_jsonable(agg),
        runs=[
          dict(
            {k: v for k, v in r.items() if k not in ("curve", "validation_curve", "epoch_curve")},
            workdir=report_paths.portable(r["workdir"], collected),
          )
          for r in collected["runs"]
        ],
      ),
      f,
      indent=1,
      default=str,
    )
  return dict(markdown=md_path, json=json_path, figures=made, aggregate=agg, collected=collected)
