"""Checkpoints with orbax: atomic saves, the last k kept, corrupt ones skipped with a warning.

A checkpoint holds the `TrainState` (params, optimizer state, step, method arrays) and a JSON
`loop` dict (RST clock, data-iterator position, method host state, config fingerprint). Orbax writes
into a temporary directory and renames it when complete, so a killed save never looks finished.
On top of that we record a manifest (size and sha256 of every file) after each save; a checkpoint
whose files no longer match (truncated, overwritten) is skipped and the previous one is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import jax
import orbax.checkpoint as ocp

from ntng_jax.errors import UserError

log = logging.getLogger(__name__)


class CheckpointError(UserError, RuntimeError):
  """No usable checkpoint could be restored although some exist."""


def _digest(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _file_table(step_dir: str) -> dict[str, list]:
  table = {}
  for root, _, files in os.walk(step_dir):
    for name in files:
      path = os.path.join(root, name)
      table[os.path.relpath(path, step_dir)] = [os.path.getsize(path), _digest(path)]
  return table


class Checkpointer:
  """Saves and restores (state, loop) pairs under `workdir/checkpoints`."""

  def __init__(self, workdir: str, keep: int = 3):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.manifests = os.path.join(self.directory, "manifests")
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=False))

  def step_dir(self, step: int) -> str:
    """The directory of the checkpoint at `step` (its `state/` item is an orbax PyTree)."""
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state, loop: dict) -> None:
    """Blocking save of `state` and the JSON-able `loop` dict at `step`, then its manifest."""
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    loop=ocp.args.JsonSave(loop)), force=True)
    self.manager.wait_until_finished()
    if jax.process_index() == 0:
      os.makedirs(self.manifests, exist_ok=True)
      tmp = os.path.join(self.manifests, f"{step}.json.tmp")
      with open(tmp, "w") as f:
        json.dump(_file_table(self.step_dir(step)), f)
      os.replace(tmp, os.path.join(self.manifests, f"{step}.json"))
      kept = {str(s) for s in self.manager.all_steps()}
      for name in os.listdir(self.manifests):
        if name.endswith(".json") and name[:-5] not in kept:
          os.remove(os.path.join(self.manifests, name))

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def damage(self, step: int) -> str | None:
    """None if the step's files match its manifest (sizes and sha256), else the reason not."""
    manifest = os.path.join(self.manifests, f"{step}.json")
    if not os.path.exists(manifest):
      return "it has no manifest (the save did not finish)"
    with open(manifest) as f:
      want = json.load(f)
    have = _file_table(self.step_dir(step))
    for name, (size, digest) in want.items():
      if name not in have:
        return f"file {name} is missing"
      if have[name][0] != size:
        return f"file {name} has {have[name][0]} bytes instead of {size}"
      if have[name][1] != digest:
        return f"file {name} has changed since it was saved"
    return None

  def latest_loop(self) -> dict | None:
    """The `loop` dict of the newest intact checkpoint (cheap: no arrays are read), or None.

    The trainer reads it first to learn the depth (and method state) to build before restoring
    the arrays themselves."""
    for step in reversed(self.steps()):
      if self.damage(step) is None:
        try:
          return self.manager.restore(step, args=ocp.args.Composite(
              loop=ocp.args.JsonRestore())).loop
        except Exception:  # noqa: BLE001 -- unreadable: restore_latest will report it
          continue
    return None

  def restore_latest(self, abstract_state):
    """Restores the newest intact checkpoint as (step, state, loop), or None if there is none.

    `abstract_state` is a tree of `jax.ShapeDtypeStruct` with shardings (the target layout).
    A corrupt newest checkpoint is skipped with a warning naming it; if every checkpoint is
    corrupt, raises CheckpointError rather than silently restarting over them.
    """
    steps = self.steps()
    for step in reversed(steps):
      reason = self.damage(step)
      if reason is None:
        try:
          restored = self.manager.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract_state), loop=ocp.args.JsonRestore()))
          return step, restored.state, restored.loop
        except Exception as e:  # noqa: BLE001 -- any read failure means: try the previous one
          reason = f"reading it failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
      log.warning("checkpoint %s is unusable because %s; falling back to an earlier one.",
                  self.step_dir(step), reason)
    if steps:
      raise CheckpointError(
          f"every checkpoint in {self.directory} is corrupt; move that directory away to start"
          " afresh, or restore it from a backup.")
    return None

  def close(self) -> None:
    self.manager.close()
