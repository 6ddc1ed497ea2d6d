"""The baseline's fine-tuning scores against what a model without the pre-training would get: per
task of each suite, at the largest budget with fine-tuning results, each seed's headline dev score
and its margin over the null in standard errors of the null on that dev set.

Headline score and null: MCC (CoLA) and Pearson (STS-B) against 0, standard error 1/sqrt(n - 1);
otherwise accuracy against the majority-class rate p, standard error sqrt(p (1 - p) / n). A task
counts as above the null when every seed is at least `MARGIN` standard errors above it: the score
is the best over fine-tuning epochs, which flatters a model at chance by about one.
"""

from __future__ import annotations

import math

from ntng_jax.experiments.results import OK, runs_of

MARGIN = 2.0


def _headline(tasks: dict, num_dev: dict, task: str) -> tuple[str, float, float, float] | None:
  """(metric, score, null, standard error) of one task, or None when the file cannot say."""
  n = num_dev.get(task)
  if not n or n < 3:
    return None
  for metric in ("mcc", "pearson"):
    if (score := tasks.get(f"{task}/{metric}")) is not None:
      return metric, score, 0.0, 1.0 / math.sqrt(n - 1)
  score, p = tasks.get(f"{task}/accuracy"), tasks.get(f"{task}/majority_rate")
  if score is None or p is None or not 0.0 < p < 1.0:
    return None
  return "accuracy", score, p, math.sqrt(p * (1.0 - p) / n)


def against_majority(collected: dict, agg: dict) -> list[str]:
  """The report section (Markdown lines), or [] when the baseline has no fine-tuning results."""
  base = agg["baseline"]
  for budget in sorted(agg["budgets"], reverse=True):
    runs = sorted(
      (r for r in runs_of(collected, base, budget, OK) if r.get("finetune")),
      key=lambda r: r["seed"],
    )
    if runs:
      break
  else:
    return []
  rows, above = [], {}
  suites = sorted({s for r in runs for s in r["finetune"]})
  for suite in suites:
    tasks = sorted(
      {t.split("/")[0] for r in runs for t in r["finetune"].get(suite, {}).get("tasks", {})}
    )
    for task in tasks:
      cells = []
      for r in runs:
        result = r["finetune"].get(suite)
        if result and (h := _headline(result["tasks"], result.get("num_dev", {}), task)):
          cells.append(h)
      if not cells:
        continue
      metric, null = cells[0][0], cells[0][2]
      margins = [(score - nul) / se for _, score, nul, se in cells]
      clear = min(margins) >= MARGIN
      if clear:
        above.setdefault(suite, []).append(task)
      per_seed = ", ".join(
        f"{100 * score:.1f} ({m:+.1f})" for (_, score, _, _), m in zip(cells, margins)
      )
      rows.append(
        f"| {suite} | {task} | {metric} | {100 * null:.1f} | {per_seed} | "
        f"{'**yes**' if clear else 'no'} |"
      )
  if not rows:
    return []
  seeds = ("seed " if len(runs) == 1 else "seeds ") + ", ".join(str(r["seed"]) for r in runs)
  summary = "; ".join(
    f"{suite}: {len(above.get(suite, []))} task(s) above ({', '.join(above.get(suite, [])) or '-'})"
    for suite in suites
  )
  return [
    "",
    "## Downstream against the null",
    "",
    f"{base} at {budget:g} RST h ({seeds}): each task's headline dev score x100 per seed,"
    " with its margin over the null in standard errors of the null in brackets. Null: the"
    " majority-class rate for accuracy, 0 for MCC and Pearson. Above = every seed at least"
    f" {MARGIN:g} standard errors above (the score is the best epoch's, which flatters a model at"
    f" chance by about one). {summary}.",
    "",
    "| suite | task | metric | null (x100) | score per seed (margin) | above |",
    "|---|---|---|---|---|---|",
  ] + rows
