"""Checkpoints that commit as a whole: state, loop metadata and manifest appear together or not at all.

A checkpoint is the directory `checkpoints/N/` holding an orbax `state` item (the `TrainState`),
an orbax JSON `loop` item (RST clock, data-iterator position, depth, method host state) and
`manifest.json` (size and sha256 of every other file). A save writes all three into
`checkpoints/.staging/N/` and only then renames that directory to `checkpoints/N/`, so a run
killed at any moment of a save leaves either the complete checkpoint or none (an uncommitted
staging directory, cleared by the next save). Rotation keeps the newest `keep` checkpoints and
deletes older ones only while every kept one is intact.

On resume the newest checkpoint whose files match its manifest and that can be read is used;
newer unusable ones are moved aside to `checkpoints/corrupt/N-<reason>/` (never deleted). If
checkpoints exist but none is usable, `CheckpointError` names them instead of a silent restart.
Older workdirs (manifest in `checkpoints/manifests/N.json`) are still read.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from ntng_jax.errors import ConfigError, UserError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STAGING = ".staging"
CORRUPT = "corrupt"
RESTART_HINT = (
  "rerun with --restart (train_and_evaluate(..., restart=True)) to set the old run"
  " aside under WORKDIR/previous/ and start a new one"
)


class CheckpointError(UserError, RuntimeError):
  """No usable checkpoint although some exist, or a save that could not be written."""


def _digest(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _file_table(step_dir: str, hashes: bool = True) -> dict[str, list]:
  table = {}
  for root, _, files in os.walk(step_dir):
    for name in files:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, step_dir)
      if rel != MANIFEST:
        table[rel] = [os.path.getsize(path), _digest(path) if hashes else None]
  return table


def _is_disk_error(e: BaseException) -> str | None:
  """'the disk is full' / 'the directory is not writable' if `e` (or its cause) says so."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    code = getattr(e, "errno", None)
    text = str(e)
    if code == errno.ENOSPC or "No space left" in text:
      return "the disk is full (no space left on device)"
    if code == errno.EDQUOT or "quota exceeded" in text.lower():
      return "the disk quota is exceeded"
    if code in (errno.EROFS, errno.EACCES, errno.EPERM) or "Read-only file system" in text:
      return "the directory is not writable"
    e = e.__cause__ or e.__context__
  return None


def _slug(reason: str) -> str:
  return re.sub(r"[^A-Za-z0-9]+", "-", reason).strip("-")[:60] or "unusable"


def check_keep(keep) -> None:
  """`train.keep_checkpoints` must keep at least the newest checkpoint."""
  if int(keep) != keep or int(keep) < 1:
    raise ConfigError(
      f"train.keep_checkpoints must be an integer of at least 1 (the newest"
      f" checkpoint is what a resume and fine-tuning read); got {keep}."
    )


class Checkpointer:
  """Saves and restores (state, loop) pairs under `workdir/checkpoints`."""

  def __init__(self, workdir: str, keep: int = 3):
    check_keep(keep)
    self.keep = int(keep)
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.legacy_manifests = os.path.join(self.directory, "manifests")
    self._ckptr = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    # Tests set this to a callable(phase) to simulate a kill at each phase of a save.
    self.phase_hook = None

  def _phase(self, name: str) -> None:
    if self.phase_hook is not None:
      self.phase_hook(name)

  def step_dir(self, step: int) -> str:
    """The directory of the checkpoint at `step` (its `state/` item is an orbax PyTree)."""
    return os.path.join(self.directory, str(step))

  def steps(self) -> list[int]:
    """The committed checkpoints (directories named by their step)."""
    if not os.path.isdir(self.directory):
      return []
    return sorted(
      int(n)
      for n in os.listdir(self.directory)
      if n.isdigit() and os.path.isdir(os.path.join(self.directory, n))
    )

  # -----------------------------------------------------------------------------------------------
  # Saving.

  def save(self, step: int, state, loop: dict) -> None:
    """Blocking, all-or-nothing save of `state` and the JSON-able `loop` dict at `step`.

    A failure to write (full disk, unwritable directory) raises CheckpointError and leaves the
    checkpoints already committed untouched."""
    staged = os.path.join(self.directory, STAGING, str(step))
    main = jax.process_index() == 0
    try:
      if main:
        shutil.rmtree(os.path.join(self.directory, STAGING), ignore_errors=True)  # never committed
        os.makedirs(os.path.join(self.directory, STAGING), exist_ok=True)
      sync_processes("ntng_ckpt_staging")
      self._phase("begin")
      self._ckptr.save(
        staged,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), loop=ocp.args.JsonSave(loop)),
        force=True,
      )
      self._phase("staged")
      if main:
        manifest = dict(format=2, step=int(step), files=_file_table(staged))
        tmp = os.path.join(staged, MANIFEST + ".tmp")
        with open(tmp, "w") as f:
          json.dump(manifest, f)
          f.flush()
          os.fsync(f.fileno())
        os.replace(tmp, os.path.join(staged, MANIFEST))
        self._phase("manifested")
        target = self.step_dir(step)
        if os.path.exists(target):  # e.g. an unverifiable older save of this step: keep it aside
          self._move_aside(step, "replaced")
        os.rename(staged, target)  # the commit
        _fsync_dir(self.directory)
        shutil.rmtree(os.path.dirname(staged), ignore_errors=True)  # empty unless leftovers
      sync_processes("ntng_ckpt_commit")
    except Exception as e:
      why = _is_disk_error(e)
      if main:
        shutil.rmtree(os.path.join(self.directory, STAGING), ignore_errors=True)
      if why is None:
        raise
      kept = self.steps()
      raise CheckpointError(
        f"could not save the checkpoint of step {step} in {self.directory} because {why};"
        f" the checkpoints already saved are intact"
        f" ({'newest: step %d' % kept[-1] if kept else 'there are none yet'}), so free some space"
        f" and rerun the same command to resume from there."
      ) from None
    self._phase("committed")
    if main:
      self._rotate()
    self._phase("rotated")

  def _rotate(self) -> None:
    """Deletes checkpoints older than the newest `keep`, only if every kept one looks intact."""
    steps = self.steps()
    kept, old = steps[-self.keep :], steps[: -self.keep]
    if not old:
      return
    for step in kept:
      reason = self.damage(step, hashes=False)
      if reason is not None:
        log.warning(
          "not deleting older checkpoints: the newer checkpoint %s looks unusable (%s).",
          self.step_dir(step),
          reason,
        )
        return
    for step in old:
      shutil.rmtree(self.step_dir(step))
      legacy = os.path.join(self.legacy_manifests, f"{step}.json")
      if os.path.exists(legacy):
        os.remove(legacy)

  def _move_aside(self, step: int, reason: str) -> str:
    """Moves `checkpoints/N` to `checkpoints/corrupt/N-<reason>` (never deletes it)."""
    base = os.path.join(self.directory, CORRUPT, f"{step}-{_slug(reason)}")
    target, i = base, 1
    while os.path.exists(target):
      target, i = f"{base}-{i}", i + 1
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.rename(self.step_dir(step), target)
    legacy = os.path.join(self.legacy_manifests, f"{step}.json")
    if os.path.exists(legacy):
      os.rename(legacy, os.path.join(target, "legacy-" + MANIFEST))
    return target

  # -----------------------------------------------------------------------------------------------
  # Reading.

  def _manifest(self, step: int) -> dict | None:
    """The step's file table: {relative path: [size, sha256]}; None if it has no manifest.
    Raises ValueError for a manifest that is not valid JSON."""
    for path in (
      os.path.join(self.step_dir(step), MANIFEST),
      os.path.join(self.legacy_manifests, f"{step}.json"),
    ):
      if os.path.exists(path):
        try:
          with open(path) as f:
            data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
          raise ValueError(f"its manifest {path} is not valid JSON ({e})") from None
        return data["files"] if "files" in data else data
    return None

  def damage(self, step: int, hashes: bool = True) -> str | None:
    """None if the step's files match its manifest (sizes, and sha256 if `hashes`), else why not.

    A checkpoint without a manifest (an older workdir whose `manifests/` was removed) is not
    damaged by this test: reading it decides."""
    try:
      want = self._manifest(step)
    except ValueError as e:
      return str(e)
    if want is None:
      return None
    have = _file_table(self.step_dir(step), hashes=hashes)
    for name, (size, digest) in want.items():
      if name not in have:
        return f"file {name} is missing"
      if have[name][0] != size:
        return f"file {name} has {have[name][0]} bytes instead of {size}"
      if hashes and have[name][1] != digest:
        return f"file {name} has changed since it was saved"
    return None

  def read_loop(self, step: int) -> dict:
    """The `loop` dict saved with `step` (no arrays are read)."""
    return self._ckptr.restore(
      self.step_dir(step), args=ocp.args.Composite(loop=ocp.args.JsonRestore())
    ).loop

  def read_state(self, step: int, abstract_state):
    return self._ckptr.restore(
      self.step_dir(step), args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
    ).state

  def latest_loop(self) -> dict | None:
    """The `loop` dict of the newest checkpoint that passes its manifest, or None (cheap)."""
    for step in reversed(self.steps()):
      if self.damage(step) is None:
        try:
          return self.read_loop(step)
        except Exception:  # noqa: BLE001 -- unreadable: restore_latest will report it
          continue
    return None

  def newest_usable(self, read, what: str = "checkpoint"):
    """`(step, read(step, loop))` for the newest checkpoint that passes its manifest and that
    `read` can read; unusable newer ones are skipped with a warning. Returns (None, None) when
    there is no checkpoint, raises CheckpointError when there are some but none is usable.
    Also returns the list of (step, reason) skipped as the third element."""
    steps = self.steps()
    skipped = []
    for step in reversed(steps):
      ok, got = self._try_read(step, read)
      if ok:
        return step, got, skipped
      reason = got
      log.warning(
        "checkpoint %s is unusable because %s; trying an earlier one.", self.step_dir(step), reason
      )
      skipped.append((step, reason))
    if steps:
      listed = "; ".join(f"step {s}: {r}" for s, r in skipped)
      raise CheckpointError(
        f"no {what} in {self.directory} is usable ({listed}); nothing was deleted, so restore"
        f" them from a backup, or {RESTART_HINT}."
      )
    return None, None, []

  def read_step(self, step: int, read):
    """`read(step, loop)` for the checkpoint at `step`, which must exist, pass its manifest and
    be readable; raises CheckpointError naming why not."""
    have = self.steps()
    if step not in have:
      listed = ", ".join(map(str, have)) or "none"
      raise CheckpointError(
        f"{self.directory} has no checkpoint of step {step} (its steps: {listed}); pick one of"
        " those, or leave the step out for the newest."
      )
    ok, got = self._try_read(step, read)
    if not ok:
      raise CheckpointError(
        f"the checkpoint of step {step} in {self.directory} is unusable because {got}; pick another"
        " step, or leave it out for the newest intact one (nothing was changed)."
      )
    return got

  def _try_read(self, step: int, read):
    """(True, read(step, loop)) if the step passes its manifest and reads, else (False, why)."""
    reason = self.damage(step)
    if reason is not None:
      return False, reason
    try:
      return True, read(step, self.read_loop(step))
    except Exception as e:  # noqa: BLE001 -- any read failure makes the step unusable
      first = str(e).splitlines()[0][:200] if str(e) else ""
      return False, f"reading it failed ({type(e).__name__}: {first})"

  def restore_latest(self, abstract_state, move_aside: bool = False):
    """Restores the newest usable checkpoint as (step, state, loop), or None if there is none.

    `abstract_state`: a tree of `jax.ShapeDtypeStruct` with shardings (the target layout), or a
    callable(loop) -> such a tree (the trainer builds the tree for the depth saved in `loop`).
    With `move_aside` (the trainer, which holds the workdir lock), newer unusable checkpoints
    are moved to `checkpoints/corrupt/` so that the next save of their step is not blocked.
    """

    def read(step, loop):
      target = abstract_state(loop) if callable(abstract_state) else abstract_state
      return self.read_state(step, target), loop

    step, got, skipped = self.newest_usable(read)
    if step is None:
      return None
    if move_aside and jax.process_index() == 0:
      for bad, reason in skipped:
        where = self._move_aside(bad, reason)
        print(f"Moved the unusable checkpoint of step {bad} to {where} ({reason}).", flush=True)
    sync_processes("ntng_ckpt_move_aside")
    state, loop = got
    return step, state, loop

  def close(self) -> None:
    self._ckptr.close()


def restore_params(step_dir: str, abstract):
  """The `params` of a checkpoint's state item alone (a partial restore: no optimizer state)."""
  item = {"params": abstract}
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)  # "metadata file does not exist" for a sub-item
  try:
    with ocp.PyTreeCheckpointer() as ckptr:
      restored = ckptr.restore(
        os.path.join(step_dir, "state"),
        args=ocp.args.PyTreeRestore(
          item=item,
          restore_args=ocp.checkpoint_utils.construct_restore_args(item),
          partial_restore=True,
        ),
      )
  finally:
    absl_logger.setLevel(level)
  return restored["params"]


def sync_processes(name: str) -> None:
  """A barrier across processes (a no-op in a one-process run)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _fsync_dir(path: str) -> None:
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)
