"""A resume must keep the run's identity (run_identity.py): each change of config that would mix
two runs in one workdir stops with one sentence listing the fields, before anything is built or
changed; the allowed changes resume; --restart sets the old run aside."""

import os
import shutil

import pytest
from conftest import fixed_table, run_module
from fault_helpers import STEP_SECONDS, committed, make_config, saved_dirs, summary

from ntng_jax.train import loop as loop_lib
from ntng_jax.train import run_identity


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished 6-step run (checkpoints 3 and 6)."""
  root = tmp_path_factory.mktemp("identity")
  config = make_config(str(root), steps=6)
  work = str(root / "run")
  loop_lib.train_and_evaluate(config, work)
  assert committed(work) == [3, 6]
  return dict(config=config, work=work, root=root)


def _copy(finished, tmp_path):
  dst = str(tmp_path / "run")
  shutil.copytree(finished["work"], dst)
  return dst


def _changed(config, key, value):
  config = config.copy_and_resolve_references()
  node = config
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  return config


CASES = [  # R1/R2 batch size, R3 method, R4 seed, R5 budget (finished run), R6/R7 model shape
  ("train.batch_size", 64, "train.batch_size 32 → 64"),
  ("method.name", "stacking", 'method.name "baseline" → "stacking"'),
  ("seed", 1, "seed 0 → 1"),
  ("train.budget_hours", 10 * STEP_SECONDS / 3600, "train.budget_hours"),
  ("model.num_layers", 3, "model.num_layers 2 → 3"),
  ("model.intermediate_size", 128, "model.intermediate_size 256 → 128"),
  ("optim.learning_rate", 1e-3, "optim.learning_rate 0.003 → 0.001"),
]


@pytest.mark.parametrize("key, value, shown", CASES, ids=[c[0] for c in CASES])
def test_changed_identity_stops_with_one_sentence(finished, tmp_path, key, value, shown):
  work = _copy(finished, tmp_path)
  before = sorted(os.listdir(work)), committed(work)
  with pytest.raises(run_identity.RunIdentityError) as e:
    loop_lib.train_and_evaluate(_changed(finished["config"], key, value), work)
  message = str(e.value)
  assert shown in message and "--restart" in message and "\n" not in message
  if key == "train.budget_hours":
    assert "cannot be extended" in message
  assert (sorted(os.listdir(work)), committed(work)) == before  # nothing touched


def test_changed_rst_table_is_refused(finished, tmp_path):
  work = _copy(finished, tmp_path)
  config = finished["config"].copy_and_resolve_references()
  config.rst.table = fixed_table(config, tmp_path / "other-table.json", 2 * STEP_SECONDS)
  with pytest.raises(run_identity.RunIdentityError, match="RST table"):
    loop_lib.train_and_evaluate(config, work)


def test_allowed_changes_resume(finished, tmp_path, capsys):
  work = _copy(finished, tmp_path)
  config = finished["config"].copy_and_resolve_references()
  config.train.log_every_steps = 2
  config.train.keep_checkpoints = 5
  config.train.eval_every_rst_minutes *= 2
  loop_lib.train_and_evaluate(config, work)
  assert "Resuming from step 6" in capsys.readouterr().out
  assert summary(work) == summary(finished["work"])


def test_workdir_from_before_run_json_is_checked_against_its_config(finished, tmp_path):
  work = _copy(finished, tmp_path)
  os.remove(os.path.join(work, run_identity.IDENTITY_FILE))
  with pytest.raises(run_identity.RunIdentityError, match="seed 0 → 1"):
    loop_lib.train_and_evaluate(_changed(finished["config"], "seed", 1), work)


def test_restart_sets_the_old_run_aside(finished, tmp_path):
  work = _copy(finished, tmp_path)
  before = saved_dirs(work)
  result = loop_lib.train_and_evaluate(_changed(finished["config"], "seed", 1), work, restart=True)
  assert result["seed"] == 1 and result["steps"] == 6
  (previous,) = os.listdir(os.path.join(work, "previous"))
  old = os.path.join(work, "previous", previous)
  assert committed(old) == [3, 6] and os.path.exists(os.path.join(old, "summary.json"))
  assert before <= saved_dirs(work)
  assert run_identity.recorded(work)["fields"]["seed"] == 1


def test_cli_changed_seed_is_one_sentence(finished, tmp_path):
  work = _copy(finished, tmp_path)
  c = finished["config"]
  proc = run_module(
    "launch.pretrain",
    "--config=configs/bert.py:size=tiny",
    f"--workdir={work}",
    f"--config.rst.table={c.rst.table}",
    f"--config.train.budget_hours={c.train.budget_hours}",
    f"--config.train.checkpoint_every_rst_minutes={c.train.checkpoint_every_rst_minutes}",
    f"--config.train.eval_every_rst_minutes={c.train.eval_every_rst_minutes}",
    f"--config.train.log_every_steps={c.train.log_every_steps}",
    f"--config.train.validation_batches={c.train.validation_batches}",
    f"--config.data.num_lines={c.data.num_lines}",
    "--config.seed=1",
    check=False,
    timeout=300,
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stdout + proc.stderr
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "seed 0 → 1" in errors[0]
