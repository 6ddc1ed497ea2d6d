"""One training process per workdir: `workdir/run.lock`, held with `flock` for the whole run.

The file records the holder's pid, host and start time (JSON). A lock whose holder died (even by
SIGKILL) is taken over, saying whose it was; without `flock`, an exclusive-create pid file checked
for liveness on this host. In a multi-process job only process 0 takes it.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time

from ntng_jax.errors import UserError

LOCK_NAME = "run.lock"


class WorkdirBusyError(UserError, RuntimeError):
  """Another process is training in this workdir."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _describe(holder: dict) -> str:
  started = holder.get("started")
  when = time.strftime(" since %Y-%m-%d %H:%M:%S UTC", time.gmtime(started)) if started else ""
  return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{when}"


class WorkdirLock:
  """`with WorkdirLock(workdir):` — raises WorkdirBusyError if another live run holds it."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = os.path.join(workdir, LOCK_NAME)
    self.enabled = enabled
    self._fd = None
    self._pidfile = False
    self.took_over = None  # the stale holder's record, if any

  def _record(self) -> dict:
    return dict(pid=os.getpid(), host=socket.gethostname(), started=time.time())

  def _read(self) -> dict:
    try:
      with open(self.path) as f:
        return json.loads(f.read() or "{}")
    except (OSError, ValueError):
      return {}

  def acquire(self) -> None:
    if not self.enabled:
      return
    import fcntl

    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        self._busy(self._read())
      if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return self._acquire_pidfile()
      raise
    previous = self._read()
    if previous.get("pid") and previous.get("pid") != os.getpid():
      self.took_over = previous
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(self._record()).encode(), 0)
    self._fd = fd

  def _busy(self, holder: dict) -> None:
    raise WorkdirBusyError(
      f"another run ({_describe(holder)}) is training in {os.path.dirname(self.path)}; wait for"
      " it to finish or stop it, or use another --workdir."
    )

  def _acquire_pidfile(self) -> None:
    """Exclusive create; a holder that is dead on this host is stale and replaced."""
    for _ in range(2):
      try:
        fd = os.open(self.path + ".pid", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
      except FileExistsError:
        try:
          with open(self.path + ".pid") as f:
            holder = json.loads(f.read() or "{}")
        except (OSError, ValueError):
          holder = {}
        same_host = holder.get("host") == socket.gethostname()
        if same_host and holder.get("pid") and not _pid_alive(int(holder["pid"])):
          self.took_over = holder
          os.remove(self.path + ".pid")
          continue
        if not same_host:
          raise WorkdirBusyError(
            f"{self.path}.pid says {_describe(holder)} is training in this workdir and that host"
            " cannot be checked from here; if that run is gone, delete the file and rerun."
          )
        self._busy(holder)
      with os.fdopen(fd, "w") as f:
        json.dump(self._record(), f)
      self._pidfile = True
      return
    self._busy({})

  def release(self) -> None:
    if self._fd is not None:
      import fcntl

      try:
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
      finally:
        os.close(self._fd)
        self._fd = None
    if self._pidfile:
      try:
        os.remove(self.path + ".pid")
      except OSError:
        pass
      self._pidfile = False

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()
