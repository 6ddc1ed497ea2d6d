"""The report's downstream check (issue 20.3): the baseline's headline dev score per task against
the majority class (accuracy) or 0 (MCC, Pearson), in standard errors of the null, every seed."""

import sys

from conftest import REPO

sys.path.insert(0, str(REPO))
from ntng_jax.experiments import majority  # noqa: E402


def _run(seed, budget, glue, num_dev, method="baseline"):
  tasks = {f"{t}/{m}": v for t, scores in glue.items() for m, v in scores.items()}
  finetune = {"glue": dict(average=None, tasks=tasks, missing=[], num_dev=num_dev)} if glue else {}
  return dict(method=method, budget_hours=budget, seed=seed, status="ok", finetune=finetune)


NUM_DEV = {"sst2": 872, "mrpc": 408, "stsb": 1500, "cola": 1043}


def test_a_task_is_above_only_when_every_seed_clears_two_standard_errors():
  seed0 = {
    "sst2": {"accuracy": 0.80, "majority_rate": 0.509},  # +16 SE
    "mrpc": {"accuracy": 0.70, "majority_rate": 0.684, "f1": 0.81},  # +0.7 SE
    "stsb": {"pearson": 0.16, "spearman": 0.14},  # +6.2 SE
    "cola": {"mcc": 0.10, "accuracy": 0.70, "majority_rate": 0.69},  # MCC +3.2 SE
  }
  seed1 = dict(seed0, cola={"mcc": 0.0, "accuracy": 0.69, "majority_rate": 0.69})
  runs = [
    _run(0, 0.72, seed0, NUM_DEV),
    _run(1, 0.72, seed1, NUM_DEV),
    _run(0, 0.72, {"mrpc": {"accuracy": 0.99, "majority_rate": 0.684}}, NUM_DEV, "lion"),
    _run(0, 0.09, {"mrpc": {"accuracy": 0.99, "majority_rate": 0.684}}, NUM_DEV),
  ]
  lines = majority.against_majority(
    {"runs": runs}, {"baseline": "baseline", "budgets": [0.09, 0.72]}
  )
  text = "\n".join(lines)
  assert "baseline at 0.72 RST h (seeds 0, 1)" in text
  assert "glue: 2 task(s) above (sst2, stsb)" in text
  rows = {line.split(" | ")[1]: line for line in lines if line.startswith("| glue |")}
  assert rows["cola"].endswith("| mcc | 0.0 | 10.0 (+3.2), 0.0 (+0.0) | no |")  # seed 1 at 0
  assert "| accuracy | 68.4 | 70.0 (+0.7), 70.0 (+0.7) | no |" in rows["mrpc"]  # lion not read
  assert rows["stsb"].endswith("| pearson | 0.0 | 16.0 (+6.2), 16.0 (+6.2) | **yes** |")


def test_the_largest_budget_with_results_is_read_and_none_gives_no_section():
  runs = [
    _run(0, 0.72, {}, {}),  # not fine-tuned yet
    _run(0, 0.36, {"sst2": {"accuracy": 0.80, "majority_rate": 0.509}}, NUM_DEV),
  ]
  agg = {"baseline": "baseline", "budgets": [0.36, 0.72]}
  assert "baseline at 0.36 RST h (seed 0)" in "\n".join(
    majority.against_majority({"runs": runs}, agg)
  )
  assert majority.against_majority({"runs": runs[:1]}, agg) == []
