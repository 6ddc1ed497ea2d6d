"""The fine-tuning result file, WORKDIR/finetune/<suite>.json: written once by `launch.finetune`,
read by the printed table and by sweep reports (never parsed back from rendered text).

Keys (GLUE/SuperGLUE): `suite`, `tasks` (per task: `epochs` [{`metrics`}], `best` {metric: score},
`best_epoch`, `majority_rate`, `num_train`, `extra`), `best`, `average` {`average`, `components`,
`missing`}; SNI: `tasks` (per task `rouge_l_paper`, `rouge_l_official`, `num_examples`),
`rouge_l_paper`, `rouge_l_official`, `rouge_l`, `num_test`. GLUE/SuperGLUE scores are fractions
(the table shows x100); SNI Rouge-L is in percent.
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict

from ntng_jax.experiments.run_files import read_json


def result_path(workdir: str, suite: str) -> str:
  """Where `launch.finetune --pretrained=WORKDIR --suite=SUITE` writes by default."""
  return os.path.join(workdir, "finetune", f"{suite}.json")


def json_safe(x):
  """NaN/inf become null so the file is strict JSON."""
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, dict):
    return {str(k): json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [json_safe(v) for v in x]
  if hasattr(x, "item") and getattr(x, "shape", None) == ():
    return json_safe(x.item())
  return x


def _score(v, scale=100.0) -> str:
  if v is None or (isinstance(v, float) and not math.isfinite(v)):
    return "n/a"
  return f"{v * scale:.2f}"


def markdown_table(result: dict) -> str:
  """The results as a Markdown table (scores x100)."""
  if result["suite"] == "sni":
    # paper: one random reference, as the paper's code scored it; SNI: the best reference.
    rows = [
      "| task | Rouge-L (paper) | Rouge-L (SNI official) | test examples |",
      "|---|---:|---:|---:|",
    ]
    for name, r in result["tasks"].items():
      rows.append(
        f"| {name} | {_score(r['rouge_l_paper'], 1)} | "
        f"{_score(r['rouge_l_official'], 1)} | {r['num_examples']} |"
      )
    rows.append(
      f"| **all** | **{_score(result['rouge_l_paper'], 1)}** | "
      f"**{_score(result['rouge_l_official'], 1)}** | {result['num_test']} |"
    )
    return "\n".join(rows)
  rows = [
    "| task | metric | best (x100) | best epoch | per epoch (x100) | majority rate (x100) "
    "| train examples |",
    "|---|---|---:|---:|---|---:|---:|",
  ]
  for name, r in result["tasks"].items():
    for metric, value in r["best"].items():
      per_epoch = ", ".join(_score(e["metrics"][metric]) for e in r["epochs"])
      rows.append(
        f"| {name} | {metric} | {_score(value)} | {r['best_epoch'].get(metric)} | "
        f"{per_epoch} | {_score(r.get('majority_rate'))} | {r['num_train']} |"
      )
    for key, metrics in r.get("extra", {}).items():
      for metric, value in metrics.items():
        rows.append(f"| {key} | {metric} | {_score(value)} | last | | | |")
  avg = result["average"]
  note = (
    f" (of {len(avg['components'])}; missing: {', '.join(avg['missing'])})"
    if avg["missing"]
    else ""
  )
  rows.append(f"| **average** | paper's{note} | **{_score(avg['average'])}** | | | | |")
  return "\n".join(rows)


def write_result(path: str, result: dict) -> dict:
  """Writes `result` as strict JSON (NaN/inf as null) atomically; returns what was written."""
  safe = json_safe(result)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(safe, f, indent=1)
  os.replace(tmp, path)
  return safe


def number(x) -> float | None:
  """x as a float if it is a real number (not a bool), else None."""
  if isinstance(x, bool) or not isinstance(x, (int, float)):
    return None
  return float(x)


def read_finetune(path: str) -> dict | None:
  """{'average': float|None, 'tasks': {'task/metric': float}, 'missing': [...], 'num_dev':
  {task: dev examples}} from the JSON that `launch.finetune` writes (`ntng_jax/eval`): the suite's
  score (GLUE/SuperGLUE: the paper's average of the best dev scores, `average.average`; SNI:
  `rouge_l`), each task's best dev score per metric (`best`), and each classification task's
  majority-class rate (`tasks`), so that a table shows whether a task beat the majority class."""
  d = read_json(path)
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
      if number(x) is not None:
        tasks[f"{task}/{metric}"] = number(x)
  num_dev = {}
  for task, info in (d.get("tasks") or {}).items():
    for key in ("majority_rate", "rouge_l"):
      if isinstance(info, dict) and number(info.get(key)) is not None:
        tasks[f"{task}/{key}"] = number(info[key])
    if isinstance(info, dict) and number(info.get("num_dev")):
      num_dev[task] = int(info["num_dev"])
  return dict(average=number(average), tasks=dict(tasks), missing=missing, num_dev=num_dev)
