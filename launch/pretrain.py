"""Pre-train under an RST budget.

  python -m launch.pretrain                                   # tiny BERT on the synthetic corpus
  python -m launch.pretrain --config=configs/t5.py:size=tiny --workdir=/tmp/t5
  python -m launch.pretrain --config=configs/bert.py:size=base --config.data.source=text \
      --config.data.path=corpus.txt --config.train.budget_hours=24

Extra validation sets: --config.data.validation.NAME=SOURCE (a text file, a shards directory or
tfds:NAME[:SPLIT]); every set is evaluated at full depth and logged as validation_loss/NAME.

Re-running the same command on the same workdir resumes from its last checkpoint (the config
must be the same apart from logging/evaluation/checkpoint intervals and the other changes listed
in ntng_jax/train/run_identity.py); --restart sets a previous run aside under WORKDIR/previous/
and starts a new one. One run at a time per workdir (WORKDIR/run.lock).
"""

import errno
import os
import signal
import sys

_STARTED = {"workdir": None}  # set once the workdir is known


def _exit_now(code: int) -> None:
  """Exits without interpreter shutdown: an interrupt can land while native threads (XLA
  compilation, tokenizer training) still run, and finalizing under them can crash. Nothing is
  lost: records are flushed as written, a checkpoint commits by a rename, the lock is a flock."""
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


def _interrupted(signum, frame):
  """Ctrl-C before the training loop installs its own handler (imports, data, compilation):
  one sentence, no traceback (the loop's handler saves a checkpoint and stops instead)."""
  where = (
    _resume_point(_STARTED["workdir"])
    if _STARTED["workdir"]
    else "the run had not started, so rerun the same command to start it"
  )
  print(f"\nerror: interrupted; {where}.", file=sys.stderr, flush=True)
  _exit_now(130)


signal.signal(signal.SIGINT, _interrupted)

from absl import flags  # noqa: E402 -- after the handler: importing JAX takes seconds

from launch import common  # noqa: E402

_CONFIG = common.define_config_flag()
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Run directory (default: runs/<family>-<size>-<method>-seed<seed>)."
)
_RESTART = flags.DEFINE_bool(
  "restart",
  False,
  "Move a previous run in --workdir (checkpoints,"
  " metrics, summary) to WORKDIR/previous/<time>/ and start anew.",
)


def main(argv):
  del argv
  config = common.parsed_config(_CONFIG)
  workdir = _WORKDIR.value or common.default_workdir(config)
  _STARTED["workdir"] = workdir
  from ntng_jax.errors import UserError

  try:
    from ntng_jax.train.loop import train_and_evaluate

    summary = common.run_cleanly(lambda: train_and_evaluate(config, workdir, _RESTART.value))
  except KeyboardInterrupt:
    print(f"\nerror: interrupted; {_resume_point(workdir)}.", file=sys.stderr, flush=True)
    _exit_now(130)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  except OSError as e:
    if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
      raise
    print(
      f"error: writing {e.filename or workdir} failed ({e.strerror}); free space or fix the"
      f" permissions, then rerun the same command ({_resume_point(workdir)}).",
      file=sys.stderr,
      flush=True,
    )
    sys.exit(2)
  sys.exit(1 if summary.get("stopped_because") == "nan" else 0)


def _resume_point(workdir: str) -> str:
  """Where rerunning the same command continues from (the newest saved checkpoint's step)."""
  ckpt = os.path.join(workdir, "checkpoints")
  steps = sorted(int(n) for n in os.listdir(ckpt) if n.isdigit()) if os.path.isdir(ckpt) else []
  if steps:
    return f"rerunning the same command resumes from the checkpoint of step {steps[-1]}"
  return "no checkpoint had been saved yet, so rerunning the same command starts the run anew"


if __name__ == "__main__":
  try:
    common.main(main)
  except KeyboardInterrupt:  # before main() runs (imports, flag parsing)
    print(
      "\nerror: interrupted before the run started; rerun the same command to start it.",
      file=sys.stderr,
      flush=True,
    )
    _exit_now(130)
