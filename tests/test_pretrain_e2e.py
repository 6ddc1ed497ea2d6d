"""The main job end to end, as a user runs it: `python -m launch.pretrain` with no config flags
(tiny BERT on the synthetic corpus, RST table calibrated at start-up) and tiny T5. The model must
learn to use context: its validation loss ends clearly below the unigram entropy of the tokenized
corpus (the loss of a model that ignores context)."""

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
  assert (tmp_path / "run" / "rst_table.json").exists()
  assert (tmp_path / "run" / "metrics.jsonl").exists()
