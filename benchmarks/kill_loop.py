"""Kill loop: a tiny BERT run SIGKILLed at random moments (some inside checkpoint saves), rerun
after each kill, must end bitwise identical to an uninterrupted run.

  nice -n 10 python benchmarks/kill_loop.py --kills=20 --out=benchmarks/results/kill_loop_cpu.json

The run uses a fixed RST table (so both runs take the same steps), a checkpoint every 2 steps and
a record every step. Each attempt is `python -m launch.pretrain` on one workdir, killed either
after a random delay or (every third kill) the moment a save is in progress (its staging
directory exists). After the last kill the run is left to finish, then compared with the
reference: every metrics.jsonl record and summary.json field except wall time, and every leaf
(parameters and optimizer state) of the final checkpoint, bitwise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP_SECONDS = 0.02


def write_table(path: str, steps_config) -> str:
  """A deterministic RST table: a full-depth step of the batch costs STEP_SECONDS."""
  from ntng_jax import rst

  c = steps_config
  layers, mb = c.model.num_layers, c.train.micro_batch_size
  per_micro = STEP_SECONDS / (c.train.batch_size // mb)
  table = rst.RSTTable(
    name="kill-loop-fixed",
    unit_sequences=mb,
    train={n: per_micro * n / layers for n in range(1, layers + 1)},
    forward={n: per_micro / 3 * n / layers for n in range(1, layers + 1)},
    fingerprint=rst.step_shape_fingerprint(c),
  )
  rst.save_table(table, path)
  return path


def command(workdir: str, table: str, steps: int) -> list[str]:
  return [
    sys.executable,
    "-m",
    "launch.pretrain",
    "--config=configs/bert.py:size=tiny",
    f"--workdir={workdir}",
    f"--config.rst.table={table}",
    f"--config.train.budget_hours={steps * STEP_SECONDS / 3600!r}",
    f"--config.train.checkpoint_every_rst_minutes={2 * STEP_SECONDS / 60 * 0.999!r}",
    f"--config.train.eval_every_rst_minutes={20 * STEP_SECONDS / 60 * 0.999!r}",
    "--config.train.log_every_steps=1",
    "--config.train.validation_batches=1",
    "--config.data.num_lines=2000",
  ]


def records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(l).items() if k != "wall_seconds"} for l in f]


def summary(workdir):
  with open(os.path.join(workdir, "summary.json")) as f:
    return {k: v for k, v in json.load(f).items() if k != "wall_seconds"}


def leaves(workdir):
  import jax
  import orbax.checkpoint as ocp

  ckpt = os.path.join(workdir, "checkpoints")
  step = max(int(n) for n in os.listdir(ckpt) if n.isdigit())
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    tree = ocp.PyTreeCheckpointer().restore(os.path.join(ckpt, str(step), "state"))
  return step, {
    jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)
  }


def compare(workdir, reference) -> dict:
  a_step, a = leaves(workdir)
  b_step, b = leaves(reference)
  differing = [
    k for k in b if k not in a or a[k].dtype != b[k].dtype or not np.array_equal(a[k], b[k])
  ]
  ra, rb = records(workdir), records(reference)
  return dict(
    summary_equal=summary(workdir) == summary(reference),
    records_equal=ra == rb,
    num_records=len(rb),
    final_step=(a_step, b_step),
    num_leaves=len(b),
    differing_leaves=differing,
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--kills", type=int, default=20)
  parser.add_argument("--steps", type=int, default=160)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--root", default=None, help="scratch directory (default: a temp dir)")
  parser.add_argument("--out", default=None, help="write the result as JSON here")
  parser.add_argument(
    "--reuse_reference",
    action="store_true",
    help="keep ROOT/reference from an earlier call (same --steps)",
  )
  args = parser.parse_args()
  sys.path.insert(0, REPO)
  from configs import get_config

  rng = random.Random(args.seed)
  root = args.root or tempfile.mkdtemp(prefix="kill_loop_")
  os.makedirs(root, exist_ok=True)
  config = get_config("bert", "size=tiny")
  table = write_table(os.path.join(root, "table.json"), config)
  reference, killed = os.path.join(root, "reference"), os.path.join(root, "killed")
  shutil.rmtree(killed, ignore_errors=True)
  wall_file = os.path.join(root, "reference_wall_s.txt")
  if args.reuse_reference and os.path.exists(wall_file):
    with open(wall_file) as f:
      ref_wall = float(f.read())
  else:
    shutil.rmtree(reference, ignore_errors=True)
    t0 = time.time()
    subprocess.run(
      command(reference, table, args.steps),
      cwd=REPO,
      check=True,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
    )
    ref_wall = time.time() - t0
    with open(wall_file, "w") as f:
      f.write(str(ref_wall))
  print(f"reference: {ref_wall:.1f} s wall", flush=True)

  kills, cycles = [], []
  while len(kills) < args.kills:
    in_save = len(kills) % 3 == 2
    delay = rng.uniform(0.5, 0.6 * ref_wall)
    proc = subprocess.Popen(
      command(killed, table, args.steps),
      cwd=REPO,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
    )
    start = time.time()
    staging = os.path.join(killed, "checkpoints", ".staging")
    saving = seen_clear = False  # a killed attempt's leftovers stay until this one's first save
    while proc.poll() is None:
      elapsed = time.time() - start
      try:
        saving = os.path.isdir(staging) and bool(os.listdir(staging))
      except FileNotFoundError:
        saving = False
      seen_clear = seen_clear or not saving
      if (
        (in_save and saving and seen_clear)
        or (not in_save and elapsed >= delay)
        or elapsed > 4 * ref_wall
      ):
        break
      time.sleep(0.002 if in_save else 0.01)
    if proc.poll() is not None:  # finished before the kill: compare, then start over afresh
      result = compare(killed, reference) if proc.returncode == 0 else {"rc": proc.returncode}
      cycles.append(dict(kills=len(kills), **result))
      print(
        f"the run finished after kill {len(kills)}: {result}; starting a new workdir", flush=True
      )
      shutil.rmtree(killed)
      continue
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = os.path.join(killed, "checkpoints")
    steps = sorted(int(n) for n in os.listdir(ckpt) if n.isdigit()) if os.path.isdir(ckpt) else []
    kills.append(
      dict(after_s=round(time.time() - start, 3), inside_save=saving, committed_after=steps[-3:])
    )
    print(
      f"kill {len(kills):2d} after {kills[-1]['after_s']:6.2f} s"
      f"{' (inside a save)' if saving else ''}; newest checkpoints {steps[-3:]}",
      flush=True,
    )

  final = subprocess.run(
    command(killed, table, args.steps), cwd=REPO, capture_output=True, text=True
  )
  if final.returncode != 0:
    print(final.stdout[-2000:], final.stderr[-2000:])
    raise SystemExit("the final rerun failed")
  result = dict(
    kills=len(kills),
    kills_inside_saves=sum(k["inside_save"] for k in kills),
    earlier_cycles=cycles,
    steps=args.steps,
    reference_wall_s=round(ref_wall, 1),
    kill_log=kills,
    corrupt_dirs=os.listdir(os.path.join(killed, "checkpoints", "corrupt"))
    if os.path.isdir(os.path.join(killed, "checkpoints", "corrupt"))
    else [],
    **compare(killed, reference),
  )
  ok = lambda r: (
    r.get("summary_equal") and r.get("records_equal") and not r.get("differing_leaves", ["?"])
  )
  result["bitwise_identical"] = bool(ok(result) and all(ok(c) for c in cycles))
  print(json.dumps({k: v for k, v in result.items() if k != "kill_log"}, indent=1))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)
  raise SystemExit(0 if result["bitwise_identical"] else 1)


if __name__ == "__main__":
  main()
