"""Aggregates a sweep's runs by (method, budget): per metric the mean and sample standard
deviation (ddof=1) over the seeds that finished, their number, the difference to the baseline's
mean at the same budget (`delta`), and the difference paired by seed (`paired`: mean and sample
std over the seeds where both the method and the baseline finished of method − baseline for the
same seed, and how many seeds that is).

A run's training loss is the mean of its curve over the last `FINAL_WINDOW` of its RST: one
logged batch is too noisy to compare, and the decayed LR leaves the model nearly still there."""

from __future__ import annotations

import math
from typing import Sequence

from ntng_jax.experiments.finetune_results import number
from ntng_jax.experiments.results import OK

FINAL_WINDOW = 0.05  # fraction of a run's RST whose logged training losses are averaged


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
  vals = [v for v in values if v is not None and math.isfinite(v)]
  if not vals:
    return None, None
  mean = sum(vals) / len(vals)
  if len(vals) < 2:
    return mean, None
  return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def final_train_loss(run: dict) -> float | None:
  """Mean training loss over the last FINAL_WINDOW of the run's RST (its curve; not finite if a
  loss there is not), else the summary's last logged one."""
  curve = run.get("curve") or []
  if not curve:
    return number((run["summary"] or {}).get("final_train_loss"))
  window = [v for t, v in curve if t >= (1.0 - FINAL_WINDOW) * curve[-1][0]]
  return sum(window) / len(window)


def run_metrics(run: dict) -> dict:
  """The numbers of one run that enter the tables: {'train_loss', 'validation_loss',
  'validation_loss/<set>', '<suite>/average', '<suite>/<task>/<metric>'}."""
  s = run["summary"] or {}
  out = {}
  if (train := final_train_loss(run)) is not None:
    out["train_loss"] = train
  if number(s.get("final_validation_loss")) is not None:
    out["validation_loss"] = float(s["final_validation_loss"])
  for name, v in (s.get("final_validation_losses") or {}).items():
    if number(v) is not None:
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


def paired_difference(ours: dict, theirs: dict, name: str) -> dict | None:
  """{'mean', 'std', 'n', 'seeds'} of (ours − theirs) for the same seed, over the seeds where both
  have a finite `name` ({seed: run_metrics} of the finished runs on each side); std is None for
  one seed; None when no seed has both."""
  seeds = sorted(
    s
    for s in set(ours) & set(theirs)
    if all(math.isfinite(number(side[s].get(name)) or math.nan) for side in (ours, theirs))
  )
  if not seeds:
    return None
  mean, std = mean_std([ours[s][name] - theirs[s][name] for s in seeds])
  return dict(mean=mean, std=std, n=len(seeds), seeds=seeds)


def _order(methods: Sequence[str], baseline: str, planned: Sequence[str]) -> list[str]:
  first = [m for m in planned if m in methods]
  rest = sorted(m for m in methods if m not in first)
  ordered = first + rest
  if baseline in ordered:
    ordered.remove(baseline)
    ordered.insert(0, baseline)
  return ordered


def aggregate(collected: dict, baseline: str = "baseline") -> dict:
  """Groups by (method, budget): per metric mean ± std over ok seeds, n, Δ of the means to the
  baseline (`delta`) and the difference to it paired by seed (`paired`)."""
  runs = collected["runs"]
  planned = collected["status"].get("methods", [])
  methods = _order({r["method"] for r in runs}, baseline, planned)
  budgets = sorted({r["budget_hours"] for r in runs})
  metric_names = ["train_loss", "validation_loss"] if runs else []  # tables even if none finished
  groups, finished = {}, {}  # finished: {(method, budget): {seed: run_metrics}} of ok runs
  for m in methods:
    for b in budgets:
      members = [r for r in runs if r["method"] == m and r["budget_hours"] == b]
      if not members:
        continue
      counts = {}
      for r in members:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
      per_metric = {}
      finished[(m, b)] = {r["seed"]: run_metrics(r) for r in members if r["status"] == OK}
      values = list(finished[(m, b)].values())
      for vals in values:
        for name in vals:
          if name not in metric_names:
            metric_names.append(name)
      for name in metric_names:
        xs = [v[name] for v in values if name in v and math.isfinite(v[name])]
        mean, std = mean_std(xs)
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
        paired = paired_difference(finished[(m, b)], finished[(baseline, b)], name)
        if paired is not None:
          cell["paired"] = paired
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
