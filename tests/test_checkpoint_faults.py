"""Fault injection on checkpoints: a kill at each phase of a save, corrupt or missing files and
manifests, every checkpoint corrupt, a full disk, a second process on the workdir, NaN and an
early Ctrl-C. Each asserts the exact outcome: a bitwise-identical resume, one sentence, and that
nothing already saved is deleted (the set of checkpoint directories before and after)."""

import os
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO
from fault_helpers import (
  SimulatedKill,
  assert_bitwise_equal,
  committed,
  kill_at,
  make_config,
  saved_dirs,
  seed_workdir,
)

from ntng_jax.config import ConfigError
from ntng_jax.train import checkpoint as ckpt_lib
from ntng_jax.train import loop as loop_lib
from ntng_jax.train import workdir_lock


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """The uninterrupted reference run (also the data template) and a run killed mid-way: its
  save of step 9 died before writing anything, so steps 3 and 6 are committed."""
  root = tmp_path_factory.mktemp("faults")
  config = make_config(str(root))
  ref = str(root / "ref")
  loop_lib.train_and_evaluate(config, ref)
  mid = seed_workdir(ref, str(root / "mid"))
  mp = pytest.MonkeyPatch()
  try:
    kill_at(mp, "begin", save_number=3)
    with pytest.raises(SimulatedKill):
      loop_lib.train_and_evaluate(config, mid)
  finally:
    mp.undo()
  assert committed(mid) == [3, 6]
  return dict(config=config, ref=ref, mid=mid, root=root)


def _copy_mid(base, tmp_path) -> str:
  dst = str(tmp_path / "run")
  shutil.copytree(base["mid"], dst)
  return dst


def _halve_largest_file(work: str, step: int) -> None:
  """Truncates the largest file of a checkpoint (not its manifest) to half its size."""
  step_dir = os.path.join(work, "checkpoints", str(step))
  victim = max(
    (os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs if f != ckpt_lib.MANIFEST),
    key=os.path.getsize,
  )
  with open(victim, "r+b") as f:
    f.truncate(os.path.getsize(victim) // 2)


def _keep_all(config):
  """The same run keeping every checkpoint (an allowed change on resume), so that a test can
  assert that recovery deleted nothing, apart from rotation."""
  config = config.copy_and_resolve_references()
  config.train.keep_checkpoints = 100
  return config


def test_kill_at_every_phase_of_a_save_resumes_bitwise(base, tmp_path, monkeypatch):
  config, work = base["config"], seed_workdir(base["ref"], str(tmp_path / "run"))
  # (phase, which save of that attempt dies, committed steps right after the kill)
  plan = [
    ("begin", 1, []),
    ("staged", 2, [3]),
    ("manifested", 1, [3]),
    ("committed", 1, [3, 6]),
    ("rotated", 2, [6, 9, 12]),
  ]
  for phase, number, expect in plan:
    with monkeypatch.context() as mp:
      killed = kill_at(mp, phase, number)
      with pytest.raises(SimulatedKill):
        loop_lib.train_and_evaluate(config, work)
    assert killed == [phase]
    assert committed(work) == expect, phase
    for step in expect:  # a committed step always carries its manifest (no K2 window)
      assert os.path.exists(os.path.join(work, "checkpoints", str(step), ckpt_lib.MANIFEST))
  loop_lib.train_and_evaluate(config, work)  # the last rerun finishes
  assert_bitwise_equal(work, base["ref"])
  assert not os.path.exists(os.path.join(work, "checkpoints", ckpt_lib.CORRUPT))
  # TensorBoard holds each step once, like metrics.jsonl.
  steps = _tensorboard_steps(os.path.join(work, "tensorboard"), "train_loss")
  assert sorted(steps) == list(range(1, 13))


def test_missing_manifest_resumes_from_that_checkpoint(base, tmp_path, capsys):
  """K2: the newest checkpoint lost its manifest: read it unverified, never StepAlreadyExists."""
  work = _copy_mid(base, tmp_path)
  os.remove(os.path.join(work, "checkpoints", "6", ckpt_lib.MANIFEST))
  loop_lib.train_and_evaluate(base["config"], work)
  assert "Resuming from step 6" in capsys.readouterr().out
  assert_bitwise_equal(work, base["ref"])


def test_deleted_legacy_manifests_dir_keeps_intact_checkpoints(base, tmp_path, capsys):
  """C3: an older workdir (manifests in checkpoints/manifests/) whose manifests/ was deleted
  resumes from its newest checkpoint; nothing is deleted or restarted."""
  work = _copy_mid(base, tmp_path)
  legacy = os.path.join(work, "checkpoints", "manifests")
  os.makedirs(legacy)
  for step in (3, 6):
    os.rename(
      os.path.join(work, "checkpoints", str(step), ckpt_lib.MANIFEST),
      os.path.join(legacy, f"{step}.json"),
    )
  ckpt = ckpt_lib.Checkpointer(work)
  assert ckpt.damage(6) is None and ckpt.read_loop(6)["step"] == 6  # legacy layout is read
  shutil.rmtree(legacy)
  before = saved_dirs(work)
  loop_lib.train_and_evaluate(_keep_all(base["config"]), work)
  assert "Resuming from step 6" in capsys.readouterr().out
  assert before <= saved_dirs(work)
  assert_bitwise_equal(work, base["ref"])


def test_interrupted_final_save_uses_and_names_the_older_step(base, tmp_path, monkeypatch, capsys):
  """K3: the final save dies after the manifest but before the commit: fine-tuning uses step 9
  and says so; the rerun commits the final step."""
  from ntng_jax.eval.pretrained import load_pretrained

  work = _copy_mid(base, tmp_path)
  with monkeypatch.context() as mp:
    kill_at(mp, "manifested", save_number=2)  # saves of this attempt: 9, then the final 12
    with pytest.raises(SimulatedKill):
      loop_lib.train_and_evaluate(base["config"], work)
  assert committed(work) == [3, 6, 9]
  capsys.readouterr()
  assert load_pretrained(work, suite="glue").step == 9
  assert "Using the checkpoint of step 9" in capsys.readouterr().err
  loop_lib.train_and_evaluate(base["config"], work)
  assert load_pretrained(work).step == 12
  assert_bitwise_equal(work, base["ref"])


def test_a_named_checkpoint_is_read_only_if_intact(base, tmp_path, capsys):
  """load_pretrained(step=N) reads step N (not the newest) through its manifest check; a step
  that is not there, or whose files changed, is one sentence and nothing is moved."""
  import jax

  from ntng_jax.eval.pretrained import PretrainedError, load_pretrained

  work = _copy_mid(base, tmp_path)  # steps 3 and 6
  old, new = load_pretrained(work, step=3), load_pretrained(work)
  assert (old.step, new.step) == (3, 6)
  assert "step 3" in capsys.readouterr().err
  differs = jax.tree.map(
    lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), old.params, new.params
  )
  assert any(jax.tree.leaves(differs))
  with pytest.raises(PretrainedError, match=r"no checkpoint of step 4 \(its steps: 3, 6\)"):
    load_pretrained(work, step=4)
  _halve_largest_file(work, 3)
  before = saved_dirs(work)
  with pytest.raises(PretrainedError, match=r"step 3 in .* is unusable because file .* bytes"):
    load_pretrained(work, step=3)
  assert saved_dirs(work) == before


def test_corrupt_newest_checkpoint_is_moved_aside_not_deleted(base, tmp_path, capsys):
  """C1: a truncated file in the newest checkpoint: moved to checkpoints/corrupt/, the run
  resumes from the previous one and finishes bitwise; a later rerun does not crash. A stale
  lock left by a dead process is taken over."""
  work = _copy_mid(base, tmp_path)
  _halve_largest_file(work, 6)
  with open(os.path.join(work, workdir_lock.LOCK_NAME), "w") as f:
    f.write('{"pid": 999999999, "host": "elsewhere"}')  # not flocked: its holder is gone
  before = saved_dirs(work)
  loop_lib.train_and_evaluate(_keep_all(base["config"]), work)
  out = capsys.readouterr().out
  assert "Took over" in out and "Resuming from step 3" in out
  assert "Moved the unusable checkpoint of step 6" in out
  corrupt = os.listdir(os.path.join(work, "checkpoints", ckpt_lib.CORRUPT))
  assert len(corrupt) == 1 and corrupt[0].startswith("6-file-")
  assert before <= saved_dirs(work)
  assert_bitwise_equal(work, base["ref"])
  loop_lib.train_and_evaluate(base["config"], work)  # finished: resumes and stops at once
  assert_bitwise_equal(work, base["ref"])


def test_every_checkpoint_corrupt_stops_with_one_sentence_then_restart(base, tmp_path):
  """C2 + C4: step 3's manifest is cut short (invalid JSON), step 6 has a truncated file: one
  sentence naming both and --restart, nothing moved or deleted; --restart sets them aside."""
  work = _copy_mid(base, tmp_path)
  manifest = os.path.join(work, "checkpoints", "3", ckpt_lib.MANIFEST)
  with open(manifest, "r+b") as f:
    f.truncate(os.path.getsize(manifest) // 2)
  state_dir = os.path.join(work, "checkpoints", "6", "state")
  victim = max(
    (os.path.join(r, f) for r, _, fs in os.walk(state_dir) for f in fs), key=os.path.getsize
  )
  with open(victim, "r+b") as f:
    f.truncate(1)
  listing = sorted(
    os.path.relpath(os.path.join(r, f), work)
    for r, _, fs in os.walk(work)
    for f in fs
    if "checkpoints" in r
  )
  with pytest.raises(ckpt_lib.CheckpointError) as e:
    loop_lib.train_and_evaluate(base["config"], work)
  message = str(e.value)
  assert "step 6:" in message and "step 3:" in message and "not valid JSON" in message
  assert "--restart" in message and "nothing was deleted" in message and "\n" not in message
  assert listing == sorted(
    os.path.relpath(os.path.join(r, f), work)
    for r, _, fs in os.walk(work)
    for f in fs
    if "checkpoints" in r
  )
  summary = loop_lib.train_and_evaluate(base["config"], work, restart=True)
  assert summary["steps"] == 12
  previous = os.listdir(os.path.join(work, "previous"))
  assert len(previous) == 1
  assert committed(os.path.join(work, "previous", previous[0])) == [3, 6]
  assert_bitwise_equal(work, base["ref"])


@pytest.mark.parametrize("keep", [0, -1])
def test_keep_checkpoints_below_one_is_a_config_error(base, tmp_path, keep):
  config = base["config"].copy_and_resolve_references()
  config.train.keep_checkpoints = keep
  with pytest.raises(ConfigError, match="keep_checkpoints must be"):
    loop_lib.train_and_evaluate(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


def test_second_process_on_a_workdir_stops_with_one_sentence(base, tmp_path):
  work = _copy_mid(base, tmp_path)
  before = committed(work)
  with workdir_lock.WorkdirLock(work):  # another run holds the workdir
    with pytest.raises(workdir_lock.WorkdirBusyError) as e:
      loop_lib.train_and_evaluate(base["config"], work)
  assert f"pid {os.getpid()}" in str(e.value) and "another run" in str(e.value)
  assert committed(work) == before


def test_nan_message_is_true_about_dtype_and_checkpoints(base, tmp_path, capsys):
  config = base["config"].copy_and_resolve_references()
  config.optim.learning_rate = 1e12
  config.optim.clip_norm = 0.0
  work = seed_workdir(base["ref"], str(tmp_path / "run"))
  summary = loop_lib.train_and_evaluate(config, work)
  assert summary["stopped_because"] == "nan"
  out = capsys.readouterr().out
  line = next(l for l in out.splitlines() if l.startswith("error: the training loss became"))
  assert "float32" not in line  # the run already is float32
  kept = committed(work)
  assert (
    f"checkpoint (step {kept[-1]}) is kept" if kept else "no checkpoint had been saved yet"
  ) in line


# -------------------------------------------------------------------------------------------------
# The checkpointer alone, on a small tree (no training).


def _tree(value):
  return {"w": np.full((64, 64), value, np.float32), "b": np.arange(16, dtype=np.int32) + value}


def _abstract():
  import jax

  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding) for k, v in _tree(0).items()}


def test_rotation_keeps_everything_while_a_newer_checkpoint_is_damaged(tmp_path):
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), keep=2)
  for step in range(1, 6):
    ckpt.save(step, _tree(step), {"step": step})
  assert ckpt.steps() == [4, 5]
  victim = max(
    (
      os.path.join(r, f)
      for r, _, fs in os.walk(ckpt.step_dir(5))
      for f in fs
      if f != ckpt_lib.MANIFEST
    ),
    key=os.path.getsize,
  )
  with open(victim, "ab") as f:
    f.write(b"x")
  ckpt.save(6, _tree(6), {"step": 6})
  assert ckpt.steps() == [4, 5, 6]  # 5 (kept) looks damaged: 4 is not deleted
  step, state, loop = ckpt.restore_latest(_abstract())
  assert step == 6 and np.array_equal(np.asarray(state["w"]), _tree(6)["w"])


def test_full_disk_during_a_save_is_one_sentence_and_keeps_state(tmp_path, monkeypatch):
  import errno

  import orbax.checkpoint as ocp

  ckpt = ckpt_lib.Checkpointer(str(tmp_path), keep=3)
  ckpt.save(1, _tree(1), {"step": 1})
  real_save = ocp.Checkpointer.save

  def full_disk(self, directory, *args, **kwargs):
    os.makedirs(str(directory) + ".orbax-checkpoint-tmp-1", exist_ok=True)
    with open(str(directory) + ".orbax-checkpoint-tmp-1/part", "wb") as f:
      f.write(b"partial")
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(ocp.Checkpointer, "save", full_disk)
  with pytest.raises(ckpt_lib.CheckpointError) as e:
    ckpt.save(2, _tree(2), {"step": 2})
  assert "the disk is full" in str(e.value) and "newest: step 1" in str(e.value)
  assert ckpt.steps() == [1]
  assert not os.path.exists(os.path.join(ckpt.directory, ckpt_lib.STAGING))
  monkeypatch.setattr(ocp.Checkpointer, "save", real_save)
  ckpt.save(2, _tree(2), {"step": 2})
  assert ckpt.steps() == [1, 2] and ckpt.damage(2) is None


def test_leftovers_of_a_killed_save_are_ignored_and_cleared(tmp_path):
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), keep=3)
  ckpt.save(1, _tree(1), {"step": 1})
  staging = os.path.join(ckpt.directory, ckpt_lib.STAGING)
  os.makedirs(os.path.join(staging, "2.orbax-checkpoint-tmp-9", "state"))  # killed in orbax
  ckpt._ckptr.save(os.path.join(staging, "3"), args=ocp_args(_tree(3)), force=True)  # unrenamed
  assert ckpt.steps() == [1]
  assert ckpt.restore_latest(_abstract())[0] == 1
  ckpt.save(2, _tree(2), {"step": 2})
  assert ckpt.steps() == [1, 2] and not os.path.exists(staging)


def test_damage_names_the_reason(tmp_path):
  ckpt = ckpt_lib.Checkpointer(str(tmp_path))
  ckpt.save(1, _tree(1), {"step": 1})
  manifest = os.path.join(ckpt.step_dir(1), ckpt_lib.MANIFEST)
  with open(manifest, "r+b") as f:
    f.truncate(10)
  assert "is not valid JSON" in ckpt.damage(1)
  os.remove(manifest)
  assert ckpt.damage(1) is None  # unverifiable: reading decides
  assert ckpt.restore_latest(_abstract())[0] == 1


def ocp_args(tree):
  import orbax.checkpoint as ocp

  return ocp.args.Composite(state=ocp.args.StandardSave(tree), loop=ocp.args.JsonSave({"step": 3}))


# -------------------------------------------------------------------------------------------------
# Ctrl-C before the first step.


def test_early_ctrl_c_is_one_sentence(base, tmp_path):
  work = seed_workdir(base["ref"], str(tmp_path / "run"))
  c = base["config"]
  proc = subprocess.Popen(
    [
      sys.executable,
      "-m",
      "launch.pretrain",
      "--config=configs/bert.py:size=tiny",
      f"--workdir={work}",
      f"--config.rst.table={c.rst.table}",
      f"--config.train.budget_hours={c.train.budget_hours}",
      f"--config.data.num_lines={c.data.num_lines}",
    ],
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  # The launcher installs its handler before it imports JAX; JAX's import, the data and the
  # compilation take seconds more, so 1.5 s lands before the training loop on any machine.
  time.sleep(1.5)
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=300)
  assert "Traceback" not in out + err
  errors = [l for l in err.splitlines() if l.startswith("error:")]
  assert proc.returncode == 130 and len(errors) == 1 and "interrupted" in errors[0]


def _tensorboard_steps(logdir, tag):
  """The steps of every `tag` scalar in the event files under `logdir` (TFRecord framing)."""
  from tensorboardX.proto import event_pb2

  steps = []
  for name in sorted(os.listdir(logdir)):
    with open(os.path.join(logdir, name), "rb") as f:
      data = f.read()
    i = 0
    while i + 12 <= len(data):
      (length,) = struct.unpack("<Q", data[i : i + 8])
      event = event_pb2.Event.FromString(data[i + 12 : i + 12 + length])
      i += 12 + length + 4
      steps += [event.step for v in event.summary.value if v.tag == tag]
  return steps
