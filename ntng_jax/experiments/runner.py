"""Runs one step of a sweep as a subprocess: its output appended to a log file (and optionally
echoed), Ctrl-C and SIGTERM passed on so the run checkpoints before the sweep stops, and the most
telling lines of its output (the error, the `Wrote PATH.` of a launch script) picked out."""

from __future__ import annotations

import datetime
import os
import re
import shlex
import signal
import subprocess
import time
from typing import Callable, TextIO


class SweepInterrupted(RuntimeError):
  """The user interrupted the sweep (Ctrl-C / SIGTERM); the running run saved a checkpoint."""


def now() -> str:
  """The current UTC time, ISO 8601 to the second."""
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


_ERROR_LINE = re.compile(r"^(error:|[A-Za-z_.]*(Error|Exception|Interrupt)\b)")


def error_line(log_text: str) -> str:
  """The most telling line of a failed run's output: the last 'error: ...' or 'XError: ...' line,
  else the last non-empty one."""
  lines = [l.strip() for l in log_text.splitlines() if l.strip()]
  for line in reversed(lines):
    if _ERROR_LINE.match(line):
      return line[:400]
  return lines[-1][:400] if lines else "(no output)"


def wrote_path(log_text: str) -> str | None:
  """PATH of the last `Wrote PATH.` line (the launch scripts' convention), else None."""
  for line in reversed(log_text.splitlines()):
    m = re.match(r"^\s*Wrote\s+(\S+?)\.?\s*$", line)
    if m:
      return m.group(1)
  return None


def run_logged(
  cmd: list[str],
  log_path: str,
  name: str,
  echo: TextIO | None = None,
  say: Callable[[str], None] = print,
) -> tuple[int, float, str]:
  """Runs `cmd`, appending its output to `log_path` (and to `echo`, if given); returns (exit code,
  wall seconds, this execution's output). Ctrl-C reaches the child too (same process group) and
  SIGTERM is forwarded to it; the trainer then checkpoints and exits, and SweepInterrupted(name)
  is raised."""
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  start = time.time()
  chunks = []
  with open(log_path, "a") as log:
    log.write(f"\n=== {now()} $ {shlex.join(cmd)}\n")
    log.flush()
    procs, interrupted = [], False

    def forward(signum, frame):  # SIGTERM to the sweep: the run checkpoints and exits, as on ^C
      nonlocal interrupted
      del frame
      interrupted = True
      for p in procs:
        if p.poll() is None:
          p.send_signal(signum)

    try:
      old_handler = signal.signal(signal.SIGTERM, forward)
    except ValueError:  # not the main thread
      old_handler = None
    proc = subprocess.Popen(
      cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    procs.append(proc)
    if interrupted:  # a SIGTERM arrived before the child existed
      proc.send_signal(signal.SIGTERM)
    try:
      while True:
        try:
          for line in proc.stdout:
            chunks.append(line)
            log.write(line)
            if echo is not None:
              echo.write("    | " + line)
          break
        except KeyboardInterrupt:
          if interrupted:  # second Ctrl-C: stop waiting for the child's checkpoint
            proc.kill()
            raise
          interrupted = True
          say("  Interrupted: waiting for the run to save a checkpoint (Ctrl-C again to abort).")
      proc.wait()
    finally:
      if old_handler is not None:
        signal.signal(signal.SIGTERM, old_handler)
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  if interrupted:
    raise SweepInterrupted(name)
  return proc.returncode, time.time() - start, "".join(chunks)
