"""The PNG figures of a sweep report (matplotlib, Agg backend, imported when drawing):

  fig_train_loss.png         training loss vs RST, one panel per budget, mean over finished seeds
  fig_validation_loss.png    final validation loss per validation set vs budget (mean ± std)
  fig_validation_rst.png     in-domain validation loss vs RST, one panel per budget, mean over
                             finished seeds
  fig_paired_delta.png       final validation loss, method − baseline paired by seed, vs budget
                             (mean ± std of the paired differences), one panel per validation set
  fig_downstream.png         fine-tuning averages per suite vs budget (mean ± std)
  fig_validation_epochs.png  validation loss vs epochs of training data, per budget (data repeated)

Each `plot_*` returns the path it wrote, or None when there is nothing to draw.
"""

from __future__ import annotations

import warnings

import numpy as np

from ntng_jax.experiments.results import DIVERGED, INCOMPLETE, OK, data_repeated, runs_of
from ntng_jax.experiments.tables import budget_label


def pyplot():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def _time_unit(budget_hours: float) -> tuple[str, float]:
  if budget_hours < 0.05:
    return "RST seconds", 3600.0
  if budget_hours < 2:
    return "RST minutes", 60.0
  return "RST hours", 1.0


def _smooth(ys: list[float], window: int) -> list[float]:
  if window <= 1:
    return ys
  out, acc, q = [], 0.0, []
  for y in ys:
    q.append(y)
    acc += y
    if len(q) > window:
      acc -= q.pop(0)
    out.append(acc / len(q))
  return out


def _mean_curve(curves: list[list[tuple[float, float]]], points: int = 200):
  """Mean over seeds on a common RST grid (linear interpolation, each seed within its range)."""
  curves = [c for c in curves if len(c) >= 2]
  if not curves:
    return None, None
  hi = max(c[-1][0] for c in curves)
  lo = min(c[0][0] for c in curves)
  grid = np.linspace(lo, hi, points)
  stack = []
  for c in curves:
    xs, ys = np.array([p[0] for p in c]), np.array([p[1] for p in c], dtype=float)
    y = np.interp(grid, xs, ys)
    y[(grid < xs[0]) | (grid > xs[-1])] = np.nan
    stack.append(y)
  with np.errstate(all="ignore"):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)
      mean = np.nanmean(np.stack(stack), axis=0)
  return grid, mean


def _save(plt, fig, path: str) -> str:
  """Writes a figure to `path` (PNG) and closes it."""
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def _panels(plt, n: int, width: float = 4.2, height: float = 3.4):
  cols = min(n, 3)
  rows = (n + cols - 1) // cols
  fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
  flat = [ax for row in axes for ax in row]
  for ax in flat[n:]:
    ax.set_visible(False)
  return fig, flat[:n]


def plot_train_loss(collected: dict, agg: dict, path: str) -> str | None:
  plt = pyplot()
  budgets, methods = agg["budgets"], agg["methods"]
  if not any(r["curve"] for r in collected["runs"]):
    return None
  colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
  fig, axes = _panels(plt, len(budgets))
  for ax, b in zip(axes, budgets):
    unit, scale = _time_unit(b)
    lows, highs = [], []
    for m in methods:
      runs = runs_of(collected, m, b)
      ok = [r["curve"] for r in runs if r["status"] == OK and r["curve"]]
      window = max(1, max((len(c) for c in ok), default=0) // 40)
      grid, mean = _mean_curve(ok)
      if grid is not None:
        y = np.array(_smooth(list(mean), window))
        ax.plot(grid / 3600.0 * scale, y, color=colors[m], lw=1.6, label=f"{m} (n={len(ok)})")
        finite = y[np.isfinite(y)]
        if finite.size:
          lows.append(finite.min())
          highs.append(finite[min(len(finite) - 1, len(finite) // 10)])
      for r in runs:
        if r["status"] in (DIVERGED, INCOMPLETE) and len(r["curve"]) >= 2:
          xs = np.array([p[0] for p in r["curve"]]) / 3600.0 * scale
          ys = np.array([p[1] for p in r["curve"]], dtype=float)
          ax.plot(
            xs, ys, color=colors[m], lw=0.8, ls="--", label=f"{m} seed {r['seed']} ({r['status']})"
          )
          ax.plot(xs[-1:], ys[-1:], "x", color=colors[m])
    ax.set_title(f"budget {budget_label(b)}")
    ax.set_xlabel(unit)
    ax.set_ylabel("training loss")
    if lows and highs:
      lo, hi = min(lows), max(highs)
      if hi > lo:
        ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  return _save(plt, fig, path)


def plot_validation_rst(collected: dict, agg: dict, path: str) -> str | None:
  """In-domain validation loss against RST, one panel per budget (mean over ok seeds)."""
  if not any(r["validation_curve"] for r in collected["runs"] if r["status"] == OK):
    return None
  plt = pyplot()
  methods, budgets = agg["methods"], agg["budgets"]
  colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
  fig, axes = _panels(plt, len(budgets))
  for ax, b in zip(axes, budgets):
    unit, scale = _time_unit(b)
    for m in methods:
      curves = [
        r["validation_curve"] for r in runs_of(collected, m, b, OK) if r["validation_curve"]
      ]
      if not curves:
        continue
      label = f"{m} (n={len(curves)})"
      grid, mean = _mean_curve(curves, points=100)
      if grid is not None:
        ax.plot(grid / 3600.0 * scale, mean, "-", color=colors[m], lw=1.4, label=label)
        # The evaluations themselves, at the mean RST of each seed's last one.
        last_x = np.mean([c[-1][0] for c in curves]) / 3600.0 * scale
        ax.plot([last_x], [np.mean([c[-1][1] for c in curves])], "o", color=colors[m], ms=4)
      else:  # one evaluation per run (e.g. only the final one): the mean point
        xs = np.mean([c[-1][0] for c in curves]) / 3600.0 * scale
        ax.plot([xs], [np.mean([c[-1][1] for c in curves])], "o", color=colors[m], label=label)
    ax.set_title(f"budget {budget_label(b)}")
    ax.set_xlabel(unit)
    ax.set_ylabel("validation loss (in-domain)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  return _save(plt, fig, path)


def plot_paired_delta(agg: dict, path: str) -> str | None:
  """Final validation loss of each method minus the baseline's, paired by seed, against the
  budget, one panel per validation set: mean with error bars of one sample std of the paired
  differences, and a line at 0."""
  base, budgets = agg["baseline"], agg["budgets"]
  panels = []
  for name in _validation_sets(agg):
    lines = {}
    for m in agg["methods"]:
      for j, b in enumerate(budgets):
        cell = ((agg["groups"].get((m, b)) or {}).get("metrics") or {}).get(name) or {}
        if m != base and cell.get("paired"):
          lines.setdefault(m, []).append((j, cell["paired"]))
    if lines:
      panels.append((name, lines))
  if not panels:
    return None
  plt = pyplot()
  colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(agg["methods"])}
  fig, axes = _panels(plt, len(panels), width=max(4.8, 1.4 * len(budgets) + 2.5), height=3.8)
  for ax, (name, lines) in zip(axes, panels):
    ax.axhline(0.0, color="black", lw=1.0, label=f"{base}")
    width = 0.3 / max(len(lines), 1)
    for i, (m, points) in enumerate(lines.items()):
      xs = [j + (i - (len(lines) - 1) / 2) * width for j, _ in points]
      ys = [p["mean"] for _, p in points]
      es = [p["std"] or 0.0 for _, p in points]
      ns = sorted({p["n"] for _, p in points})
      n_label = f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}–{ns[-1]}"
      ax.errorbar(
        xs, ys, yerr=es, fmt="o-", color=colors[m], capsize=3, ms=4, lw=1, label=f"{m} ({n_label})"
      )
    ax.set_xticks(range(len(budgets)))
    ax.set_xticklabels([budget_label(b) for b in budgets])
    ax.set_xlim(-0.5, len(budgets) - 0.5)
    ax.set_xlabel("RST budget")
    ax.set_ylabel(f"Δ final validation loss vs {base}")
    where = f"{name.split('/', 1)[1]} set" if "/" in name else "validation"
    ax.set_title(f"{where}: method − baseline, paired by seed (mean ± std)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  return _save(plt, fig, path)


def _points_vs_budget(
  agg: dict, names: list[str], titles: list[str], ylabels: list[str], path: str
) -> str | None:
  plt = pyplot()
  methods, budgets = agg["methods"], agg["budgets"]
  fig, axes = _panels(plt, len(names))
  colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
  for ax, name, title, ylabel in zip(axes, names, titles, ylabels):
    shown = [
      m
      for m in methods
      if any((g := agg["groups"].get((m, b))) and name in g["metrics"] for b in budgets)
    ]
    width = 0.6 / max(len(shown), 1)
    for i, m in enumerate(shown):
      xs, ys, es = [], [], []
      for j, b in enumerate(budgets):
        g = agg["groups"].get((m, b))
        cell = g["metrics"].get(name) if g else None
        if cell:
          xs.append(j + (i - (len(shown) - 1) / 2) * width)
          ys.append(cell["mean"])
          es.append(cell["std"] or 0.0)
      if xs:
        ax.errorbar(xs, ys, yerr=es, fmt="o-", color=colors[m], capsize=3, ms=4, lw=1, label=m)
    ax.set_xticks(range(len(budgets)))
    ax.set_xticklabels([budget_label(b) for b in budgets])
    ax.set_xlabel("RST budget")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  return _save(plt, fig, path)


def _validation_sets(agg: dict) -> list[str]:
  """The metric names of the validation sets (one per named set where there are several)."""
  sets = [n for n in agg["metric_names"] if n.startswith("validation_loss/")]
  if len(sets) >= 2:
    return sets
  return ["validation_loss"] if "validation_loss" in agg["metric_names"] else []


def _set_title(name: str) -> str:
  return f"validation loss: {name.split('/', 1)[1]}" if "/" in name else "validation loss"


def plot_validation(agg: dict, path: str) -> str | None:
  names = _validation_sets(agg)
  if not names:
    return None
  titles = [_set_title(n) for n in names]
  return _points_vs_budget(agg, names, titles, ["final validation loss"] * len(names), path)


def plot_validation_epochs(collected: dict, agg: dict, path: str) -> str | None:
  """Validation loss against epochs of training data, per budget (mean over ok seeds)."""
  if not data_repeated(collected):
    return None
  plt = pyplot()
  methods, budgets = agg["methods"], agg["budgets"]
  colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
  fig, axes = _panels(plt, len(budgets))
  for ax, b in zip(axes, budgets):
    for m in methods:
      curves = [
        r["epoch_curve"] for r in runs_of(collected, m, b, OK) if len(r["epoch_curve"]) >= 2
      ]
      grid, mean = _mean_curve(curves, points=100)
      if grid is not None:
        ax.plot(grid, mean, "-", color=colors[m], lw=1.4, label=f"{m} (n={len(curves)})")
    ax.set_title(f"budget {budget_label(b)}")
    ax.set_xlabel("epochs of training data")
    ax.set_ylabel("validation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  return _save(plt, fig, path)


def plot_downstream(agg: dict, path: str) -> str | None:
  names = [n for n in agg["metric_names"] if n.endswith("/average")]
  if not names:
    return None
  titles = [f"{n.split('/')[0].upper()} average" for n in names]
  return _points_vs_budget(agg, names, titles, ["dev score (average)"] * len(names), path)
