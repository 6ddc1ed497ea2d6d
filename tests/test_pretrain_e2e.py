"""The main job end to end, as a user runs it: `python -m launch.pretrain` with no config flags
(tiny BERT on the synthetic corpus, priced by its built-in reference RST table, so no start-up
calibration) and tiny T5. The model must learn to use context: its validation loss ends clearly
below the unigram entropy of the tokenized corpus (the loss of a model that ignores context).
The same command in two fresh workdirs gives the same run."""

import json

import pytest
from conftest import run_module


@pytest.mark.parametrize("config_arg", [None, "configs/t5.py:size=tiny"])
def test_main_job_learns_context(tmp_path, config_arg):
  args = [f"--workdir={tmp_path}/run"] + ([f"--config={config_arg}"] if config_arg else [])
  proc = run_module("launch.pretrain", *args, timeout=900)
  assert "ETA" in proc.stdout and "RST" in proc.stdout
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert summary["stopped_because"] == "budget"
  assert summary["rst_seconds"] <= summary["rst_budget_seconds"]
  unigram = summary["unigram_entropy_nats"]
  assert unigram > 0
  assert summary["final_validation_loss"] < unigram - 0.1, summary
  assert summary["rst_table"].startswith("builtin-"), summary["rst_table"]
  assert "calibrating" not in proc.stdout
  assert (tmp_path / "run" / "rst_table.json").exists()  # the run's clock, kept for resuming
  assert (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_same_command_in_two_workdirs_gives_the_same_run(tmp_path):
  """Before: each workdir calibrated its own table at start-up, so machine load set the number of
  steps (1,776 vs 3,670 for the default job). Now both are priced by the built-in table."""
  summaries = []
  for name in ("a", "b"):
    run_module(
      "launch.pretrain",
      f"--workdir={tmp_path / name}",
      "--config.train.budget_hours=0.002",
      timeout=900,
    )
    summary = json.loads((tmp_path / name / "summary.json").read_text())
    summary.pop("wall_seconds")
    summaries.append(summary)
  assert summaries[0]["steps"] > 100 and summaries[0]["stopped_because"] == "budget"
  assert summaries[0] == summaries[1]
