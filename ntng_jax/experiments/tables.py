"""The Markdown of a sweep report: one table per metric (methods x RST budgets, mean ± std over
finished seeds, Δ of the means to the baseline, what happened to the other seeds) followed by the
differences to the baseline paired by seed (mean ± std of method − baseline over the seeds where
both finished, and n), downstream tasks, the baseline against the unigram entropy and its
fine-tuning scores against the majority class, the verdicts against the baseline, epochs and the
runs.

Every path in the report is relative to the sweep root (the report's own directory), so the
report reads the same on any machine.
"""

from __future__ import annotations

import datetime
import math
import os
import statistics
from typing import Sequence

from ntng_jax.experiments.finetune_results import number
from ntng_jax.experiments.grid import format_budget
from ntng_jax.experiments.majority import against_majority
from ntng_jax.experiments.report_paths import locate, portable, portable_text
from ntng_jax.experiments.results import (
  DIVERGED,
  FAILED,
  INCOMPLETE,
  MISSING,
  OK,
  data_repeated,
  runs_of,
)
from ntng_jax.experiments.run_files import read_json
from ntng_jax.experiments.stats import FINAL_WINDOW, final_train_loss

LOWER_IS_BETTER = ("train_loss", "validation_loss", "perplexity")
TRAIN_LOSS_NOTE = (
  f"Mean of each run's logged training losses over the last {FINAL_WINDOW:.0%} of its RST."
  " Batch selection's is the loss of the whole scored mega-batch before each step (the kept"
  " sequences are the hardest by design); layer dropping's is measured with its dropped layers."
)


def _decimals(x: float) -> int:
  return 2 if abs(x) >= 10 else 4


def fmt(x: float | None, decimals: int | None = None) -> str:
  if x is None or not math.isfinite(x):
    return "—"
  return f"{x:.{_decimals(x) if decimals is None else decimals}f}"


def status_note(counts: dict) -> str:
  parts = [f"{counts[s]} {s}" for s in (DIVERGED, FAILED, INCOMPLETE, MISSING) if counts.get(s)]
  return ", ".join(parts)


def cell_text(group: dict | None, name: str) -> str:
  if group is None:
    return "not run"
  counts = group["counts"]
  total = sum(counts.values())
  cell = group["metrics"].get(name)
  if cell is None:
    note = status_note(counts)
    if counts.get(OK):
      return "—"  # ok runs without this metric (e.g. no fine-tuning yet)
    return f"**{note}**" if note else "—"
  d = _decimals(cell["mean"])
  text = fmt(cell["mean"], d)
  if cell["std"] is not None:
    text += f" ± {fmt(cell['std'], d)}"
  if "delta" in cell:
    text += f" (Δ {cell['delta']:+.{d}f})"
  if cell["n"] < total:
    text += f" [{cell['n']}/{total} seeds; {status_note(counts)}]"
  return text


def title(name: str) -> str:
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


def budget_label(b: float) -> str:
  return f"{format_budget(b)} h"


def metric_table(agg: dict, name: str) -> list[str]:
  lines = [
    "| method | " + " | ".join(budget_label(b) for b in agg["budgets"]) + " |",
    "|---|" + "---|" * len(agg["budgets"]),
  ]
  for m in agg["methods"]:
    cells = [cell_text(agg["groups"].get((m, b)), name) for b in agg["budgets"]]
    lines.append(f"| {m} | " + " | ".join(cells) + " |")
  return lines


def paired_text(cell: dict | None, decimals: int) -> str:
  """'+0.0123 ± 0.0040 (n=3)' from a cell's paired difference; '— (n=0)' without one."""
  paired = (cell or {}).get("paired")
  if paired is None:
    return "— (n=0)"
  text = f"{paired['mean']:+.{decimals}f}"
  if paired["std"] is not None:
    text += f" ± {fmt(paired['std'], decimals)}"
  return text + f" (n={paired['n']})"


def paired_table(agg: dict, name: str) -> list[str]:
  """Rows of method − baseline paired by seed per budget; [] when no method has a paired seed."""
  base = agg["baseline"]
  others = [m for m in agg["methods"] if m != base]
  has_pair = any(
    "paired" in ((agg["groups"].get((m, b)) or {}).get("metrics", {}).get(name) or {})
    for m in others
    for b in agg["budgets"]
  )
  if not has_pair:
    return []
  lines = [
    "| method − " + base + " | " + " | ".join(budget_label(b) for b in agg["budgets"]) + " |",
    "|---|" + "---|" * len(agg["budgets"]),
  ]
  for m in others:
    cells = []
    for b in agg["budgets"]:
      g, gb = agg["groups"].get((m, b)), agg["groups"].get((base, b))
      if g is None or gb is None:
        cells.append("not run")
        continue
      cell = g["metrics"].get(name)
      base_cell = gb["metrics"].get(name)
      decimals = _decimals((cell or base_cell or {}).get("mean", 0.0))
      cells.append(paired_text(cell, decimals))
    lines.append(f"| {m} | " + " | ".join(cells) + " |")
  return lines


def verdicts(agg: dict) -> list[str]:
  """One line per method: at how many budgets it beats the baseline, and by more than noise. The
  difference is the one paired by seed (noise: the std of the paired differences) where some seed
  has both runs, else the difference of the means (noise: both stds combined)."""
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
        paired = cell.get("paired")
        if paired:
          gain, noise = sign * paired["mean"], paired["std"] or 0.0
        else:
          gain = sign * cell["delta"]
          noise = math.hypot(cell["std"] or 0.0, bcell["std"] or 0.0)
        if gain > 0:
          better += 1
          if noise and gain > noise:
            clear += 1
      if compared:
        parts.append(
          f"{name}: better at {better}/{compared} budgets"
          + (f" ({clear} by more than one std)" if clear else "")
        )
    status = [
      f"{status_note(g['counts'])} at {budget_label(b)}"
      for b in agg["budgets"]
      if (g := agg["groups"].get((m, b))) and status_note(g["counts"])
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

A sweep speaks to these claims only where its baseline has learned context: see "Learning
regime" above; a baseline near the unigram entropy only says who reached that plateau first."""


def learning_regime(collected: dict, agg: dict) -> list[str]:
  """The baseline's final in-domain validation loss per budget against the unigram entropy of
  its training tokens (summary.json `unigram_entropy_nats`); [] if the runs do not record it."""
  base = agg["baseline"]
  lines = []
  for b in agg["budgets"]:
    ok = [r["summary"] for r in runs_of(collected, base, b, OK) if r.get("summary")]
    pairs = [
      (s["final_validation_loss"], s["unigram_entropy_nats"])
      for s in ok
      if number(s.get("final_validation_loss")) is not None
      and number(s.get("unigram_entropy_nats")) is not None
    ]
    if pairs:
      gaps = ", ".join(fmt(h - v, 3) for v, h in pairs)
      lines.append(
        f"| {budget_label(b)} | {fmt(statistics.mean(v for v, _ in pairs), 4)}"
        f" | {fmt(statistics.mean(h for _, h in pairs), 4)} | {gaps} |"
      )
  if not lines:
    return []
  return [
    "",
    "## Learning regime",
    "",
    f"{base}'s final in-domain validation loss against the unigram entropy of its training"
    " tokens (the loss of a model that ignores context), in nats; the gap is per seed.",
    "",
    "| budget | validation loss (mean) | unigram entropy | gap per seed |",
    "|---|---|---|---|",
  ] + lines


def _repeats_in_domain(agg: dict, name: str) -> bool:
  """True if `name` is a per-set loss or perplexity whose every cell equals the in-domain one."""
  if not name.startswith(("validation_loss/", "perplexity/")):
    return False
  in_domain = name.split("/", 1)[0]
  cells = [(g["metrics"].get(name), g["metrics"].get(in_domain)) for g in agg["groups"].values()]
  return all(a is None or (b is not None and a["mean"] == b["mean"]) for a, b in cells)


def render_markdown(collected: dict, agg: dict, figures: dict, notes: Sequence[str]) -> str:
  status = collected["status"]
  root = collected["root"]
  out = ["# Sweep report", ""]
  shown_root = os.path.basename(os.path.normpath(root)) if os.path.isabs(root) else root
  out.append(f"Root: `{shown_root}` (paths below are relative to it)  ")
  if status.get("config"):
    out.append(
      f"Config: `{status['config']}`"
      + (f" with `{' '.join(status['extra'])}`" if status.get("extra") else "")
      + "  "
    )
  table = status.get("rst_table")
  table_json = read_json(locate(table, collected)) if table else None
  if table_json:
    meta = table_json.get("meta", {})
    out.append(
      f"RST table: `{table_json.get('name')}` (`{portable(table, collected)}`;"
      f" {meta.get('device', '?')},"
      f" {meta.get('date', '?')}), shared by every run  "
    )
  elif table:
    out.append(f"RST table: `{portable(table, collected)}`, shared by every run  ")
  il = status.get("il_model")
  if il:
    out.append(
      f"IL model for rho_loss: `{portable(il.get('workdir'), collected)}` ({il.get('status', '?')}"
      + (f"; losses `{portable(il['il_path'], collected)}`" if il.get("il_path") else "")
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
    " incomplete or missing are counted in each cell. Under each table, the difference"
    f" paired by seed: mean ± sample std over seeds of (method − {agg['baseline']} for the same"
    " seed), n = seeds where both finished; it removes the seed-to-seed noise the two share."
  )
  repeated = [n for n in agg["metric_names"] if _repeats_in_domain(agg, n)]
  for name in agg["metric_names"]:
    if name.count("/") >= 2 or (
      name.count("/") == 1
      and not name.startswith(("validation_loss/", "perplexity/"))
      and not name.endswith("/average")
    ):
      continue  # per-task metrics go to their own table
    if name in repeated:
      continue  # the in-domain set's own table: the same numbers as validation_loss / perplexity
    heading = title(name)
    same = [n for n in repeated if n.startswith(name + "/")]
    if len(same) == 1:  # name the set whose own table was dropped
      heading = heading.replace("in-domain set", f"in-domain set `{same[0].split('/', 1)[1]}`")
    out += ["", f"### {heading}", ""]
    if name == "train_loss":
      out += [TRAIN_LOSS_NOTE, ""]
    out += metric_table(agg, name)
    paired = paired_table(agg, name)
    if paired:
      out += ["", f"Paired by seed, method − {agg['baseline']} (mean ± std, n):", ""] + paired
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
            f"| {m} | {budget_label(b)} | "
            + " | ".join(
              fmt(g["metrics"][t]["mean"]) if t in g["metrics"] else "—" for t in task_names
            )
            + " |"
          )
  out += learning_regime(collected, agg)
  out += against_majority(collected, agg)
  out += [
    "",
    "## Against the baseline",
    "",
    "Better = the difference paired by seed favours the method (the difference of the means where"
    " no seed has both runs); one std = of the paired differences.",
    "",
  ]
  out += verdicts(agg) + ["", PAPER_FINDINGS]
  if figures:
    out += ["", "## Figures", ""]
    captions = dict(
      train_loss="Training loss vs RST, one panel per budget (mean over finished seeds; thin"
      " dashed lines: single diverged or incomplete seeds).",
      validation_loss="Final validation loss per validation set vs budget (mean ± std).",
      validation_rst="Validation loss (in-domain) vs RST, one panel per budget (mean over"
      " finished seeds; dot: the mean of the last evaluations).",
      paired_delta=f"Final validation loss minus {agg['baseline']}'s for the same seed vs"
      " budget, one panel per validation set (mean ± std of the paired differences over seeds"
      f" where both finished; below 0 is better than {agg['baseline']}).",
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
    ft = ", ".join(f"{k}: {fmt(v.get('average'))}" for k, v in r["finetune"].items())
    ft_fail = [k for k, v in r["finetune_status"].items() if v == "failed"]
    if ft_fail:
      ft = (ft + "; " if ft else "") + ", ".join(f"{k} failed" for k in ft_fail)
    err = (r["error"] or "").replace("|", "\\|")
    rst_s = s.get("rst_seconds")
    out.append(
      f"| {r['method']} | {budget_label(r['budget_hours'])} | {r['seed']} |"
      f" {r['status']} | {s.get('steps', '—')} |"
      f" {f'{rst_s:.1f}' if isinstance(rst_s, (int, float)) else '—'} |"
      f" {s.get('stopped_because') or '—'} | {fmt(final_train_loss(r))} |"
      f" {fmt(number(s.get('final_validation_loss')))} | {ft or '—'} | {err} |"
    )
  return portable_text("\n".join(out) + "\n", collected)


def epoch_table(collected: dict, agg: dict) -> list[str]:
  """Markdown rows: mean epochs consumed per method x budget; [] when no data repeated."""
  if not data_repeated(collected):
    return []
  lines = [
    "| method | " + " | ".join(budget_label(b) for b in agg["budgets"]) + " |",
    "|---|" + "---|" * len(agg["budgets"]),
  ]
  for m in agg["methods"]:
    cells = []
    for b in agg["budgets"]:
      xs = [r["epochs"] for r in runs_of(collected, m, b, OK) if r.get("epochs") is not None]
      cells.append(f"{sum(xs) / len(xs):.2f}" if xs else "—")
    lines.append(f"| {m} | " + " | ".join(cells) + " |")
  return lines
