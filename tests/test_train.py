"""The training loop: budget, schedule, determinism, resume, checkpoints, failures, errors."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, fixed_table, run_module, tiny_config

from ntng_jax.train import checkpoint as ckpt_lib
from ntng_jax.train import loop as loop_lib
from ntng_jax.train import programs

STEP_SECONDS = 0.02  # RST seconds per full-depth step in the fixed test table


def small_run_config(tmp_path, family="bert", steps=40, **overrides):
  config = tiny_config(
    family,
    **{
      "data.num_lines": 4000,
      "train.log_every_steps": 1,
      "train.validation_batches": 2,
      **overrides,
    },
  )
  config.train.budget_hours = steps * STEP_SECONDS / 3600
  config.rst.table = fixed_table(config, tmp_path / f"table-{family}.json", STEP_SECONDS)
  return config


def read_records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_budget_schedule_and_rst_clock(tmp_path):
  config = small_run_config(tmp_path, steps=40)
  summary = loop_lib.train_and_evaluate(config, str(tmp_path / "run"))
  budget = config.train.budget_hours * 3600
  assert summary["stopped_because"] == "budget"
  assert budget - STEP_SECONDS - 1e-9 <= summary["rst_seconds"] <= budget * (1 + 1e-9)
  train = [r for r in read_records(tmp_path / "run") if "train_loss" in r]
  rsts = [r["rst_seconds"] for r in train]
  assert all(b > a for a, b in zip(rsts, rsts[1:]))
  peak = max(r["learning_rate"] for r in train)
  assert peak == pytest.approx(config.optim.learning_rate, rel=0.05)
  # The last step's rate is the schedule at its midpoint: half a step's share of the budget × 2.
  assert train[-1]["learning_rate"] <= config.optim.learning_rate * STEP_SECONDS / budget * (
    1 + 1e-6
  )
  for key in (
    "step",
    "train_loss",
    "learning_rate",
    "tokens",
    "wall_seconds",
    "rst_seconds",
    "rst_budget_fraction",
    "active_layers",
  ):
    assert key in train[-1]
  assert any("validation_loss" in r for r in read_records(tmp_path / "run"))
  for key in (
    "final_train_loss",
    "final_validation_loss",
    "steps",
    "tokens",
    "rst_seconds",
    "wall_seconds",
    "stopped_because",
  ):
    assert key in summary


def test_last_step_learning_rate_below_one_percent(tmp_path):
  config = small_run_config(tmp_path, steps=200, **{"train.max_steps": 0})
  config.train.log_every_steps = 50
  loop_lib.train_and_evaluate(config, str(tmp_path / "run"))
  train = [r for r in read_records(tmp_path / "run") if "train_loss" in r]
  assert train[-1]["learning_rate"] <= 0.01 * config.optim.learning_rate


def test_same_command_twice_gives_identical_losses(tmp_path):
  config = small_run_config(tmp_path, steps=15)
  loop_lib.train_and_evaluate(config, str(tmp_path / "a"))
  loop_lib.train_and_evaluate(config, str(tmp_path / "b"))
  losses_a = [r.get("train_loss") for r in read_records(tmp_path / "a")]
  losses_b = [r.get("train_loss") for r in read_records(tmp_path / "b")]
  assert losses_a == losses_b and len(losses_a) >= 15


def test_corrupt_latest_checkpoint_falls_back(tmp_path, caplog):
  config = small_run_config(tmp_path, steps=30, **{"train.checkpoint_every_rst_minutes": 0.004})
  workdir = str(tmp_path / "run")
  loop_lib.train_and_evaluate(config, workdir)
  checkpointer = ckpt_lib.Checkpointer(workdir)
  steps = checkpointer.steps()
  assert len(steps) >= 2
  latest = os.path.join(checkpointer.directory, str(steps[-1]))
  victim = max(
    (os.path.join(r, f) for r, _, fs in os.walk(latest) for f in fs), key=os.path.getsize
  )
  with open(victim, "r+b") as f:
    f.truncate(os.path.getsize(victim) // 2)
  built, _ = _abstract(config, workdir)
  with caplog.at_level("WARNING"):
    step, state, loop = checkpointer.restore_latest(built.abstract)
  assert step == steps[-2] and loop["step"] == steps[-2]
  assert f"checkpoint {latest} is unusable" in caplog.text
  # Every checkpoint corrupt: a clear error rather than a silent restart over them.
  for s in steps[:-1]:
    d = os.path.join(checkpointer.directory, str(s))
    for root, _, files in os.walk(d):
      for name in files:
        open(os.path.join(root, name), "w").close()
  with pytest.raises(ckpt_lib.CheckpointError, match="no checkpoint in .* is usable"):
    checkpointer.restore_latest(built.abstract)


def _abstract(config, workdir):
  from ntng_jax import data as data_lib
  from ntng_jax import partitioning
  from ntng_jax.optim import build_optimizer

  mesh = partitioning.make_mesh(config.mesh)
  tx = build_optimizer(config.optim)
  ds = data_lib.build_dataset(config.data, "bert", config.model.vocab_size, workdir)
  example = next(iter(ds.train_iterator(config.train.micro_batch_size, seed=0)))
  built = programs.build_programs(
    config, programs.model_at_depth(config, config.model.num_layers), tx, mesh, example
  )
  return built, mesh


def _pretrain_args(config, workdir):
  return [
    "--config=configs/bert.py:size=tiny",
    f"--workdir={workdir}",
    f"--config.rst.table={config.rst.table}",
    f"--config.train.budget_hours={config.train.budget_hours}",
    f"--config.data.num_lines={config.data.num_lines}",
    "--config.train.checkpoint_every_rst_minutes=0.01",
    "--config.train.log_every_steps=5",
  ]


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
  config = small_run_config(tmp_path, steps=300)
  full, killed = tmp_path / "full", tmp_path / "killed"
  run_module("launch.pretrain", *_pretrain_args(config, full))
  proc = subprocess.Popen(
    [sys.executable, "-m", "launch.pretrain", *_pretrain_args(config, killed)],
    cwd=REPO,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  checkpoints = killed / "checkpoints"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if any(checkpoints.glob(f"*/{ckpt_lib.MANIFEST}")):  # a committed checkpoint
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run ended before it could be killed"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not (killed / "summary.json").exists()
  out = run_module("launch.pretrain", *_pretrain_args(config, killed))
  assert "Resuming from step" in out.stdout
  a = json.loads((full / "summary.json").read_text())
  b = json.loads((killed / "summary.json").read_text())
  assert b["steps"] == a["steps"]
  assert b["rst_seconds"] == a["rst_seconds"]
  assert b["final_train_loss"] == pytest.approx(a["final_train_loss"], abs=1e-6)
  la = [r["train_loss"] for r in read_records(full) if "train_loss" in r]
  lb = [r["train_loss"] for r in read_records(killed) if "train_loss" in r]
  np.testing.assert_allclose(lb, la, atol=1e-6)


def test_nan_loss_stops_with_message_and_keeps_checkpoint(tmp_path):
  config = small_run_config(tmp_path, steps=60, **{"train.checkpoint_every_rst_minutes": 0.003})
  config.optim.learning_rate = 1e12
  config.optim.clip_norm = 0.0
  workdir = str(tmp_path / "run")
  summary = loop_lib.train_and_evaluate(config, workdir)
  assert summary["stopped_because"] == "nan"
  assert not np.isfinite(summary["final_train_loss"]) or summary["steps"] < 60
  checkpointer = ckpt_lib.Checkpointer(workdir)
  built, _ = _abstract(config, workdir)
  restored = checkpointer.restore_latest(built.abstract)
  if restored is not None:  # every kept checkpoint holds finite parameters
    leaves = [np.asarray(x) for x in __import__("jax").tree.leaves(restored[1].params)]
    assert all(np.isfinite(x).all() for x in leaves)


@pytest.mark.parametrize(
  "args, field",
  [
    (["--config=configs/bert.py:size=huge"], "size"),
    (["--config=configs/bert.py:method=magic"], "method"),
    (["--config.data.seq_len=512"], "data.seq_len"),
    (["--config.data.source=text", "--config.data.path=/nonexistent/corpus.txt"], "data.path"),
    (["--config.train.batch_size=0"], "train.batch_size"),
  ],
)
def test_bad_config_is_one_clear_sentence(tmp_path, args, field):
  proc = run_module("launch.pretrain", f"--workdir={tmp_path}/w", *args, check=False, timeout=120)
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr + proc.stdout
  assert field in proc.stderr + proc.stdout


def test_core_and_training_do_not_import_tensorflow(tmp_path):
  config = small_run_config(tmp_path, steps=3)
  code = f"""
import sys, json
sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(REPO / "tests")!r})
import ntng_jax
from conftest import tiny_config
from ntng_jax.train.loop import train_and_evaluate
config = tiny_config('bert', **{{'data.num_lines': 2000}})
config.train.budget_hours = {config.train.budget_hours}
config.rst.table = {config.rst.table!r}
train_and_evaluate(config, {str(tmp_path / "run")!r})
heavy = sorted({{m.split('.')[0] for m in sys.modules}} & {{'tensorflow', 'seqio', 'tensorflow_datasets'}})
print('HEAVY', json.dumps(heavy))
"""
  proc = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "HEAVY []" in proc.stdout
