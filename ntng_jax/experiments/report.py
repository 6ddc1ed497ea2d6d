"""Reports of a sweep: the paper-style table (methods × RST budgets, mean ± std over seeds and the
difference to the baseline) and figures, from the files the runs wrote.

Reads, under a sweep root (layout in `ntng_jax/experiments/sweep.py`):
  ROOT/sweep_status.json                    planned runs, failures (optional: a grid run by hand or
                                            from `--dry_run` commands is found by its directories)
  ROOT/<method>/budget-<B>/seed-<S>/summary.json, metrics.jsonl
  ROOT/<method>/budget-<B>/seed-<S>/finetune/<suite>.json   (`launch.finetune` results)
Writes:
  ROOT/report.md, ROOT/report.json (the same numbers, machine-readable) and PNG figures
  ROOT/fig_train_loss.png        training loss vs RST, one panel per budget, mean over seeds
  ROOT/fig_validation_loss.png   final validation loss per validation set vs budget (± std)
  ROOT/fig_downstream.png        fine-tuning averages per suite vs budget (± std), if any
  ROOT/fig_validation_epochs.png validation loss vs epochs of training data, one panel per
                                 budget, if the data repeated (`data.unique_tokens`)

Causal LMs (`gpt` family) have no fine-tuning suite: their tables add validation perplexity
(exp of the token-mean validation loss, per validation set) in place of GLUE.

Every run keeps its status in the tables: `ok` (stopped at the budget or max_steps), `diverged`
(a non-finite loss), `failed` (non-zero exit, e.g. a method not available in this build),
`incomplete` (interrupted or still running) and `missing` (planned, never started). Means and
standard deviations (sample std, ddof=1, as for the paper's 3 seeds) are over the ok runs only,
and each cell says how many seeds that is and what happened to the others.

matplotlib is imported lazily with the Agg backend; without it the report has tables only.
"""

from __future__ import annotations

import datetime
import json
import math
import os
from collections import OrderedDict
from typing import Sequence

from ntng_jax.experiments import sweep as sweep_lib

OK, DIVERGED, FAILED, INCOMPLETE, MISSING = "ok", "diverged", "failed", "incomplete", "missing"
LOWER_IS_BETTER = ("train_loss", "validation_loss", "perplexity")


# -------------------------------------------------------------------------------------------------
# Reading runs.


def read_metrics(workdir: str) -> list[dict]:
  records = []
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      for line in f:
        line = line.strip()
        if line:
          try:
            records.append(json.loads(line))
          except ValueError:
            continue  # a line cut off by a kill
  except OSError:
    pass
  return records


def _number(x) -> float | None:
  if isinstance(x, bool) or not isinstance(x, (int, float)):
    return None
  return float(x)


def read_finetune(path: str) -> dict | None:
  """{'average': float|None, 'tasks': {'task/metric': float}, 'missing': [...]} from the JSON that
  `launch.finetune` writes (`ntng_jax/eval`): the suite's score (GLUE/SuperGLUE: the paper's
  average of the best dev scores, `average.average`; SNI: `rouge_l`), each task's best dev score
  per metric (`best`), and each classification task's majority-class rate (`tasks`), so that a
  table shows whether a task beat the majority class."""
  d = sweep_lib.read_json(path)
  if not isinstance(d, dict):
    return None
  average, missing = d.get("average"), []
  if isinstance(average, dict):
    missing = list(average.get("missing") or [])
    average = average.get("average")
  if average is None:
    average = d.get("rouge_l")
  tasks = OrderedDict()
  for task, metrics in (d.get("best") or {}).items():
    for metric, x in (metrics or {}).items():
      if _number(x) is not None:
        tasks[f"{task}/{metric}"] = _number(x)
  for task, info in (d.get("tasks") or {}).items():
    for key in ("majority_rate", "rouge_l"):
      if isinstance(info, dict) and _number(info.get(key)) is not None:
        tasks[f"{task}/{key}"] = _number(info[key])
  return dict(average=_number(average), tasks=dict(tasks), missing=missing)


def _run_status(summary: dict | None, entry: dict, has_metrics: bool) -> str:
  stopped = (summary or {}).get("stopped_because")
  if stopped in sweep_lib.COMPLETE:
    return OK
  if stopped == sweep_lib.DIVERGED or entry.get("status") == "diverged":
    return DIVERGED
  if entry.get("status") == "failed":
    return FAILED
  if summary is not None or has_metrics or entry.get("status") in ("running", "interrupted"):
    return INCOMPLETE
  return MISSING


def collect(root: str) -> dict:
  """Every run of the sweep under `root` (planned in sweep_status.json and/or found on disk)."""
  status = sweep_lib.read_json(os.path.join(root, sweep_lib.STATUS_FILE)) or {}
  entries = dict(status.get("runs", {}))
  found = {}
  for dirpath, dirnames, _ in os.walk(root):
    parsed = sweep_lib.parse_run_dir(os.path.relpath(dirpath, root))
    if parsed:
      dirnames[:] = []  # do not descend into checkpoints etc.
      method, budget, seed = parsed
      if method != sweep_lib.IL_METHOD:
        found[f"{method}/budget-{sweep_lib.format_budget(budget)}/seed-{seed}"] = dirpath
  runs = []
  for key in sorted(set(entries) | set(found)):
    entry = entries.get(key, {})
    parsed = sweep_lib.parse_run_dir(key)
    if parsed is None or parsed[0] == sweep_lib.IL_METHOD:
      continue
    method, budget, seed = parsed
    workdir = found.get(key) or entry.get("workdir") or os.path.join(root, key)
    summary = sweep_lib.read_summary(workdir)
    records = read_metrics(workdir)
    finetune = {}
    ft_dir = os.path.join(workdir, "finetune")
    if os.path.isdir(ft_dir):
      for name in sorted(os.listdir(ft_dir)):
        if name.endswith(".json"):
          result = read_finetune(os.path.join(ft_dir, name))
          if result is not None:
            finetune[name[:-5]] = result
    run_status = _run_status(summary, entry, bool(records))
    error = entry.get("error")
    if run_status == DIVERGED and not error:
      error = "non-finite training loss"
    runs.append(
      dict(
        key=key,
        method=method,
        budget_hours=budget,
        seed=seed,
        workdir=workdir,
        status=run_status,
        error=error if run_status in (FAILED, DIVERGED, INCOMPLETE) else None,
        returncode=entry.get("returncode"),
        summary=summary,
        finetune=finetune,
        finetune_status={k: v.get("status") for k, v in entry.get("finetune", {}).items()},
        curve=[
          (r["rst_seconds"], r["train_loss"])
          for r in records
          if "train_loss" in r and "rst_seconds" in r
        ],
        validation_curve=[
          (r["rst_seconds"], r["validation_loss"])
          for r in records
          if r.get("validation_loss") is not None and "rst_seconds" in r
        ],
        epoch_curve=[
          (r["epoch"], r["validation_loss"])
          for r in records
          if r.get("validation_loss") is not None and _number(r.get("epoch")) is not None
        ],
        epochs=max(
          (r["epoch"] for r in records if _number(r.get("epoch")) is not None), default=None
        ),
      )
    )
  return dict(root=root, status=status, runs=runs)


# -------------------------------------------------------------------------------------------------
# Aggregation.


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
  vals = [v for v in values if v is not None and math.isfinite(v)]
  if not vals:
    return None, None
  mean = sum(vals) / len(vals)
  if len(vals) < 2:
    return mean, None
  return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def run_metrics(run: dict) -> dict:
  """The numbers of one run that enter the tables: {'train_loss', 'validation_loss',
  'validation_loss/<set>', '<suite>/average', '<suite>/<task>/<metric>'}."""
  s = run["summary"] or {}
  out = {}
  for key, name in (
    ("final_train_loss", "train_loss"),
    ("final_validation_loss", "validation_loss"),
  ):
    if _number(s.get(key)) is not None:
      out[name] = float(s[key])
  for name, v in (s.get("final_validation_losses") or {}).items():
    if _number(v) is not None:
      out[f"validation_loss/{name}"] = float(v)
  if s.get("family") == "gpt":  # a causal LM: perplexity, exp(mean token loss), per set
    if "validation_loss" in out:
      out["perplexity"] = math.exp(min(out["validation_loss"], 700.0))
    for name, v in list(out.items()):
      if name.startswith("validation_loss/"):
        out["perplexity/" + name.split("/", 1)[1]] = math.exp(min(v, 700.0))
  for suite, result in run["finetune"].items():
    if result.get("average") is not None:
      out[f"{suite}/average"] = result["average"]
    for task, v in result["tasks"].items():
      out[f"{suite}/{task}"] = v
  return out


def _order(methods: Sequence[str], baseline: str, planned: Sequence[str]) -> list[str]:
  first = [m for m in planned if m in methods]
  rest = sorted(m for m in methods if m not in first)
  ordered = first + rest
  if baseline in ordered:
    ordered.remove(baseline)
    ordered.insert(0, baseline)
  return ordered


def aggregate(collected: dict, baseline: str = "baseline") -> dict:
  """Groups by (method, budget): per metric mean ± std over ok seeds, n, and Δ vs the baseline."""
  runs = collected["runs"]
  planned = collected["status"].get("methods", [])
  methods = _order({r["method"] for r in runs}, baseline, planned)
  budgets = sorted({r["budget_hours"] for r in runs})
  metric_names = ["train_loss", "validation_loss"] if runs else []  # tables even if none finished
  groups = {}
  for m in methods:
    for b in budgets:
      members = [r for r in runs if r["method"] == m and r["budget_hours"] == b]
      if not members:
        continue
      counts = {}
      for r in members:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
      per_metric = {}
      values = [run_metrics(r) for r in members if r["status"] == OK]
      for vals in values:
        for name in vals:
          if name not in metric_names:
            metric_names.append(name)
      for name in metric_names:
        xs = [v[name] for v in values if name in v]
        mean, std = _mean_std(xs)
        if mean is not None:
          per_metric[name] = dict(mean=mean, std=std, n=len(xs))
      groups[(m, b)] = dict(
        method=m,
        budget_hours=b,
        seeds=sorted(r["seed"] for r in members),
        counts=counts,
        metrics=per_metric,
        errors=sorted({r["error"] for r in members if r["error"]}),
      )
  for (m, b), g in groups.items():
    base = groups.get((baseline, b))
    for name, cell in g["metrics"].items():
      if m != baseline and base and name in base["metrics"]:
        cell["delta"] = cell["mean"] - base["metrics"][name]["mean"]
  return dict(
    methods=methods,
    budgets=budgets,
    metric_names=_sort_metrics(metric_names),
    groups=groups,
    baseline=baseline,
  )


def _sort_metrics(names: list[str]) -> list[str]:
  def rank(n):
    if n == "train_loss":
      return (0, n)
    if n == "validation_loss":
      return (1, n)
    if n.startswith("validation_loss/"):
      return (2, n)
    if n == "perplexity" or n.startswith("perplexity/"):
      return (2.5, n)
    if n.endswith("/average"):
      return (3, n)
    return (4, n)

  return sorted(names, key=rank)


# -------------------------------------------------------------------------------------------------
# Markdown.


def _decimals(x: float) -> int:
  return 2 if abs(x) >= 10 else 4


def _fmt(x: float | None, decimals: int | None = None) -> str:
  if x is None or not math.isfinite(x):
    return "—"
  return f"{x:.{_decimals(x) if decimals is None else decimals}f}"


def _status_note(counts: dict) -> str:
  parts = [f"{counts[s]} {s}" for s in (DIVERGED, FAILED, INCOMPLETE, MISSING) if counts.get(s)]
  return ", ".join(parts)


def cell_text(group: dict | None, name: str) -> str:
  if group is None:
    return "not run"
  counts = group["counts"]
  total = sum(counts.values())
  cell = group["metrics"].get(name)
  if cell is None:
    note = _status_note(counts)
    if counts.get(OK):
      return "—"  # ok runs without this metric (e.g. no fine-tuning yet)
    return f"**{note}**" if note else "—"
  d = _decimals(cell["mean"])
  text = _fmt(cell["mean"], d)
  if cell["std"] is not None:
    text += f" ± {_fmt(cell['std'], d)}"
  if "delta" in cell:
    text += f" (Δ {cell['delta']:+.{d}f})"
  if cell["n"] < total:
    text += f" [{cell['n']}/{total} seeds; {_status_note(counts)}]"
  return text


def _title(name: str) -> str:
  if name == "train_loss":
    return "Final training loss (lower is better)"
  if name == "validation_loss":
    return "Final validation loss, in-domain set (lower is better)"
  if name.startswith("validation_loss/"):
    return f"Final validation loss on `{name.split('/', 1)[1]}` (lower is better)"
  if name == "perplexity":
    return "Final validation perplexity, in-domain set (lower is better)"
  if name.startswith("perplexity/"):
    return f"Final validation perplexity on `{name.split('/', 1)[1]}` (lower is better)"
  if name.endswith("/average"):
    return f"{name.split('/')[0].upper()} average, dev (higher is better)"
  return name


def _budget_label(b: float) -> str:
  return f"{sweep_lib.format_budget(b)} h"


def metric_table(agg: dict, name: str) -> list[str]:
  lines = [
    "| method | " + " | ".join(_budget_label(b) for b in agg["budgets"]) + " |",
    "|---|" + "---|" * len(agg["budgets"]),
  ]
  for m in agg["methods"]:
    cells = [cell_text(agg["groups"].get((m, b)), name) for b in agg["budgets"]]
    lines.append(f"| {m} | " + " | ".join(cells) + " |")
  return lines


def _verdicts(agg: dict) -> list[str]:
  """One line per method: at how many budgets it beats the baseline, and by more than noise."""
  base, lines = agg["baseline"], []
  headline = [
    n
    for n in agg["metric_names"]
    if n in ("train_loss", "validation_loss", "perplexity") or n.endswith("/average")
  ]
  for m in agg["methods"]:
    if m == base:
      continue
    parts = []
    for name in headline:
      better = clear = compared = 0
      for b in agg["budgets"]:
        g, gb = agg["groups"].get((m, b)), agg["groups"].get((base, b))
        if not g or not gb or name not in g["metrics"] or name not in gb["metrics"]:
          continue
        cell, bcell = g["metrics"][name], gb["metrics"][name]
        compared += 1
        sign = (
          -1
          if name in LOWER_IS_BETTER or name.startswith(("validation_loss/", "perplexity/"))
          else 1
        )
        gain = sign * cell["delta"]
        if gain > 0:
          better += 1
          noise = math.hypot(cell["std"] or 0.0, bcell["std"] or 0.0)
          if noise and gain > noise:
            clear += 1
      if compared:
        parts.append(
          f"{name}: better at {better}/{compared} budgets"
          + (f" ({clear} by more than one std)" if clear else "")
        )
    status = [
      f"{_status_note(g['counts'])} at {_budget_label(b)}"
      for b in agg["budgets"]
      if (g := agg["groups"].get((m, b))) and _status_note(g["counts"])
    ]
    lines.append(
      f"- **{m}** vs {base}: "
      + ("; ".join(parts) if parts else "no comparable runs")
      + (f" — runs: {'; '.join(status)}" if status else "")
      + "."
    )
  return lines


PAPER_FINDINGS = """\
For comparison, the paper's findings (Kaddour et al. 2023; `docs/paper.md` §8),
at 6/12/24 RST hours on BERT-base and T5-base:
- Layer stacking is the only method that beats the baseline's training loss consistently; its
  advantage shrinks as the budget grows.
- Selective backprop and RHO-loss have worse validation loss than the baseline on every
  validation set.
- Cheaper-step methods (stacking, layer dropping) can slightly improve downstream scores at small
  budgets; the gain disappears at the largest one. Dearer-step methods (batch selection, some
  optimizers) are significantly worse on some downstream tasks at every budget.
- Overall, no method consistently beats a baseline whose learning rate is fully decayed within the
  same RST budget.

Tiny CPU sweeps only exercise the machinery; their numbers say nothing about these claims."""


def render_markdown(collected: dict, agg: dict, figures: dict, notes: Sequence[str]) -> str:
  status = collected["status"]
  root = collected["root"]
  out = ["# Sweep report", ""]
  out.append(f"Root: `{root}`  ")
  if status.get("config"):
    out.append(
      f"Config: `{status['config']}`"
      + (f" with `{' '.join(status['extra'])}`" if status.get("extra") else "")
      + "  "
    )
  table = status.get("rst_table")
  table_json = sweep_lib.read_json(table) if table and os.path.exists(str(table)) else None
  if table_json:
    meta = table_json.get("meta", {})
    out.append(
      f"RST table: `{table_json.get('name')}` (`{table}`; {meta.get('device', '?')},"
      f" {meta.get('date', '?')}), shared by every run  "
    )
  elif table:
    out.append(f"RST table: `{table}`, shared by every run  ")
  il = status.get("il_model")
  if il:
    out.append(
      f"IL model for rho_loss: `{il.get('workdir')}` ({il.get('status', '?')}"
      + (f"; losses `{il['il_path']}`" if il.get("il_path") else "")
      + (f"; {il['error']}" if il.get("error") and il.get("status") == "failed" else "")
      + ")  "
    )
  out.append(
    f"Generated: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}"
  )
  out.append("")
  n = len(collected["runs"])
  counts = {}
  for r in collected["runs"]:
    counts[r["status"]] = counts.get(r["status"], 0) + 1
  out.append(f"{n} runs: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ".")
  out.append("")
  out.append("## Results (methods × RST budgets)")
  out.append("")
  out.append(
    f"Mean ± sample std over seeds that finished (budget or max_steps); Δ = method mean"
    f" − {agg['baseline']} mean at the same budget. Runs that diverged, failed, are"
    " incomplete or missing are counted in each cell."
  )
  for name in agg["metric_names"]:
    if name.count("/") >= 2 or (
      name.count("/") == 1
      and not name.startswith(("validation_loss/", "perplexity/"))
      and not name.endswith("/average")
    ):
      continue  # per-task metrics go to their own table
    if (
      name.startswith(("validation_loss/", "perplexity/"))
      and sum(1 for x in agg["metric_names"] if x.startswith("validation_loss/")) < 2
    ):
      continue  # one validation set: the same numbers as validation_loss / perplexity
    out += ["", f"### {_title(name)}", ""] + metric_table(agg, name)
  if not collected["runs"]:
    out += ["", "No runs found."]
  task_names = [
    n
    for n in agg["metric_names"]
    if "/" in n
    and not n.startswith(("validation_loss", "perplexity"))
    and not n.endswith("/average")
  ]
  if task_names:
    out += ["", "### Downstream tasks (mean over seeds)", ""]
    out.append("| method | budget | " + " | ".join(task_names) + " |")
    out.append("|---|---|" + "---|" * len(task_names))
    for m in agg["methods"]:
      for b in agg["budgets"]:
        g = agg["groups"].get((m, b))
        if g and any(t in g["metrics"] for t in task_names):
          out.append(
            f"| {m} | {_budget_label(b)} | "
            + " | ".join(
              _fmt(g["metrics"][t]["mean"]) if t in g["metrics"] else "—" for t in task_names
            )
            + " |"
          )
  out += ["", "## Against the baseline", ""] + _verdicts(agg) + ["", PAPER_FINDINGS]
  if figures:
    out += ["", "## Figures", ""]
    captions = dict(
      train_loss="Training loss vs RST, one panel per budget (mean over finished seeds; thin"
      " dashed lines: single diverged or incomplete seeds).",
      validation_loss="Final validation loss per validation set vs budget (mean ± std).",
      downstream="Fine-tuning averages per suite vs budget (mean ± std over seeds).",
      validation_epochs="Validation loss vs epochs of the (limited, repeated) training data,"
      " one panel per budget (mean over finished seeds).",
    )
    for key, path in figures.items():
      out += [f"![{key}]({os.path.basename(path)})", "", captions.get(key, key), ""]
  epochs = epoch_table(collected, agg)
  if epochs:
    out += [
      "",
      "## Epochs of training data",
      "",
      "Epochs each run consumed (mean over seeds; data limited by `data.unique_tokens`).",
      "",
    ] + epochs
  for note in notes:
    out += ["", f"_{note}_"]
  out += [
    "",
    "## Runs",
    "",
    "| method | budget | seed | status | steps | RST s | stopped | train loss |"
    " validation loss | fine-tuning | error |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in sorted(
    collected["runs"],
    key=lambda r: (agg["methods"].index(r["method"]), r["budget_hours"], r["seed"]),
  ):
    s = r["summary"] or {}
    ft = ", ".join(f"{k}: {_fmt(v.get('average'))}" for k, v in r["finetune"].items())
    ft_fail = [k for k, v in r["finetune_status"].items() if v == "failed"]
    if ft_fail:
      ft = (ft + "; " if ft else "") + ", ".join(f"{k} failed" for k in ft_fail)
    err = (r["error"] or "").replace("|", "\\|")
    rst_s = s.get("rst_seconds")
    out.append(
      f"| {r['method']} | {_budget_label(r['budget_hours'])} | {r['seed']} |"
      f" {r['status']} | {s.get('steps', '—')} |"
      f" {f'{rst_s:.1f}' if isinstance(rst_s, (int, float)) else '—'} |"
      f" {s.get('stopped_because') or '—'} | {_fmt(_number(s.get('final_train_loss')))} |"
      f" {_fmt(_number(s.get('final_validation_loss')))} | {ft or '—'} | {err} |"
    )
  return "\n".join(out) + "\n"


# -------------------------------------------------------------------------------------------------
# Figures.


def _pyplot():
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
  import numpy as np

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
    import warnings

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
  import numpy as np

  plt = _pyplot()
  budgets, methods = agg["budgets"], agg["methods"]
  if not any(r["curve"] for r in collected["runs"]):
    return None
  colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
  fig, axes = _panels(plt, len(budgets))
  for ax, b in zip(axes, budgets):
    unit, scale = _time_unit(b)
    lows, highs = [], []
    for m in methods:
      runs = [r for r in collected["runs"] if r["method"] == m and r["budget_hours"] == b]
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
    ax.set_title(f"budget {_budget_label(b)}")
    ax.set_xlabel(unit)
    ax.set_ylabel("training loss")
    if lows and highs:
      lo, hi = min(lows), max(highs)
      if hi > lo:
        ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  return _save(plt, fig, path)


def _points_vs_budget(
  agg: dict, names: list[str], titles: list[str], ylabels: list[str], path: str
) -> str | None:
  plt = _pyplot()
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
    ax.set_xticklabels([_budget_label(b) for b in budgets])
    ax.set_xlabel("RST budget")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  return _save(plt, fig, path)


def plot_validation(agg: dict, path: str) -> str | None:
  sets = [n for n in agg["metric_names"] if n.startswith("validation_loss/")]
  names = (
    sets
    if len(sets) >= 2
    else (["validation_loss"] if "validation_loss" in agg["metric_names"] else [])
  )
  if not names:
    return None
  titles = [
    f"validation loss: {n.split('/', 1)[1]}" if "/" in n else "validation loss" for n in names
  ]
  return _points_vs_budget(agg, names, titles, ["final validation loss"] * len(names), path)


def _repeats(collected: dict) -> bool:
  """True if some run saw its training data more than once."""
  return any((r.get("epochs") or 0.0) > 1.0 for r in collected["runs"])


def epoch_table(collected: dict, agg: dict) -> list[str]:
  """Markdown rows: mean epochs consumed per method x budget; [] when no data repeated."""
  if not _repeats(collected):
    return []
  lines = [
    "| method | " + " | ".join(_budget_label(b) for b in agg["budgets"]) + " |",
    "|---|" + "---|" * len(agg["budgets"]),
  ]
  for m in agg["methods"]:
    cells = []
    for b in agg["budgets"]:
      xs = [
        r["epochs"]
        for r in collected["runs"]
        if r["method"] == m
        and r["budget_hours"] == b
        and r["status"] == OK
        and r.get("epochs") is not None
      ]
      cells.append(f"{sum(xs) / len(xs):.2f}" if xs else "—")
    lines.append(f"| {m} | " + " | ".join(cells) + " |")
  return lines


def plot_validation_epochs(collected: dict, agg: dict, path: str) -> str | None:
  """Validation loss against epochs of training data, per budget (mean over ok seeds)."""
  if not _repeats(collected):
    return None
  plt = _pyplot()
  methods, budgets = agg["methods"], agg["budgets"]
  colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
  fig, axes = _panels(plt, len(budgets))
  for ax, b in zip(axes, budgets):
    for m in methods:
      curves = [
        r["epoch_curve"]
        for r in collected["runs"]
        if r["method"] == m
        and r["budget_hours"] == b
        and r["status"] == OK
        and len(r["epoch_curve"]) >= 2
      ]
      grid, mean = _mean_curve(curves, points=100)
      if grid is not None:
        ax.plot(grid, mean, "-", color=colors[m], lw=1.4, label=f"{m} (n={len(curves)})")
    ax.set_title(f"budget {_budget_label(b)}")
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


# -------------------------------------------------------------------------------------------------


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
      _pyplot()
    except ImportError:
      notes.append("Figures skipped: matplotlib is not installed (pip install matplotlib).")
    else:
      for key, fn in (
        ("train_loss", lambda p: plot_train_loss(collected, agg, p)),
        ("validation_loss", lambda p: plot_validation(agg, p)),
        ("downstream", lambda p: plot_downstream(agg, p)),
        ("validation_epochs", lambda p: plot_validation_epochs(collected, agg, p)),
      ):
        path = fn(os.path.join(root, f"fig_{key}.png"))
        if path:
          made[key] = path
  if baseline not in agg["methods"]:
    notes.append(f"No '{baseline}' runs: the Δ columns are empty (choose another with --baseline).")
  md_path = os.path.join(root, "report.md")
  with open(md_path, "w") as f:
    f.write(render_markdown(collected, agg, made, notes))
  json_path = os.path.join(root, "report.json")
  with open(json_path, "w") as f:
    json.dump(
      dict(
        aggregate=_jsonable(agg),
        runs=[
          {k: v for k, v in r.items() if k not in ("curve", "validation_curve", "epoch_curve")}
          for r in collected["runs"]
        ],
      ),
      f,
      indent=1,
      default=str,
    )
  return dict(markdown=md_path, json=json_path, figures=made, aggregate=agg, collected=collected)
