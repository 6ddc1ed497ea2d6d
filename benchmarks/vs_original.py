"""ntng_jax against the original PyTorch code on this CPU, side by side and interleaved.

  python benchmarks/vs_original.py --rounds=3 \
      [--peer_bench=../shared/tools/peer_bench] [--peer_venv=../peer_venv] \
      [--peer_dir=$PEER_DIR] [--shapes=bert-small,bert-base,t5-small,t5-base] \
      [--out=benchmarks/results/vs_original_cpu_DATE.json]

Per round and shape: the original's harness (`peer_step.py` in its own torch venv, see its
README: the original's models, fp32, AdamW/AdamWScale, grad clip) times `--steps` train steps
and forward passes, then ntng_jax's jitted train step (`benchmarks/step_time.py: build`, state
donated) and scoring pass (`make_score_step`, the forward of batch selection) time the same
numbers at the same shapes; the order of the two flips every round. The run also measures the
machine's matmul rates: the harness's `peak_flops.py` (torch and numpy, 2048², 2 threads) and a
JAX 2048² float32 matmul, at the start and the end. Prints and writes per-round and median
ratios ntng_jax / original (< 1 = ntng_jax faster) plus the load average.

Shapes: BERT small 32 × 128, BERT base 8 × 128, T5 small 16 × (512 + 114), T5 base
2 × (512 + 114). T5 runs the original with `--t5-optim adamwscale` (ntng_jax's T5 optimizer).
ntng_jax times each shape in a fresh process with the XLA flags its launchers would set for that
width (`ntng_jax.xla_policy`; NTNG_XLA_POLICY=off times without them).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import step_time  # noqa: E402

from ntng_jax import partitioning, xla_policy  # noqa: E402
from ntng_jax.train import programs  # noqa: E402

# name: (family, size, batch, encoder/BERT sequence length)
SHAPES = {
  "bert-small": ("bert", "small", 32, 128),
  "bert-base": ("bert", "base", 8, 128),
  "t5-small": ("t5", "small", 16, 512),
  "t5-base": ("t5", "base", 2, 512),
}


def peer_python(args) -> str:
  return os.path.join(args.peer_venv, "bin", "python")


def run_peer(args, name: str) -> dict:
  cmd = [
    peer_python(args),
    os.path.join(args.peer_bench, "peer_step.py"),
    "--peer-dir",
    args.peer_dir,
    "--configs",
    name,
    "--steps",
    str(args.steps),
    "--warmup",
    str(args.warmup),
    "--threads",
    str(args.threads),
  ]
  if name.startswith("t5"):
    cmd += ["--t5-optim", "adamwscale"]
  out = subprocess.run(cmd, capture_output=True, text=True, cwd=args.peer_bench)
  if out.returncode:
    raise SystemExit(f"the original's harness failed on {name}: {out.stderr.strip()[-2000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def peer_peak(args) -> list:
  out = subprocess.run(
    [
      peer_python(args),
      os.path.join(args.peer_bench, "peak_flops.py"),
      "--threads",
      str(args.threads),
    ],
    capture_output=True,
    text=True,
    cwd=args.peer_bench,
  )
  if out.returncode:
    raise SystemExit(f"peak_flops.py failed: {out.stderr.strip()[-2000:]}")
  return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def jax_peak(n: int = 2048, reps: int = 10) -> dict:
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  mm = jax.jit(jnp.matmul)
  jax.block_until_ready(mm(a, b))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(mm(a, b))
    times.append(time.perf_counter() - t0)
  flop = 2 * n**3
  return dict(
    lib="jax",
    dtype="float32",
    n=n,
    s_median=float(np.median(times)),
    gflop_per_s=flop / float(np.median(times)) / 1e9,
    gflop_per_s_best=flop / min(times) / 1e9,
    version=jax.__version__,
  )


def time_ntng(name: str, args) -> dict:
  family, size, batch, seq = SHAPES[name]
  b = step_time.build(family, size, batch, seq_len=seq)
  score = programs.score_program(b["built"].model, "float32")
  train, fwd = [], []
  with partitioning.activate(b["mesh"]):
    for i in range(args.warmup + args.steps):
      t0 = time.perf_counter()
      b["state"], m = b["built"].train_step(b["state"], b["batch"], b["rng"], b["controls"])
      jax.block_until_ready(m)
      if i >= args.warmup:
        train.append(time.perf_counter() - t0)
    for i in range(args.warmup + args.steps):
      t0 = time.perf_counter()
      jax.block_until_ready(score(b["state"].params, b["batch"]))
      if i >= args.warmup:
        fwd.append(time.perf_counter() - t0)
  groups = step_time.param_groups(b["state"].params)
  flops, _ = step_time.model_flops(b["config"], groups, b["batch_np"])
  out = dict(
    step_s_median=float(np.median(train)),
    fwd_s_median=float(np.median(fwd)),
    step_s_all=[round(t, 4) for t in train],
    fwd_s_all=[round(t, 4) for t in fwd],
    params=int(sum(groups.values())),
    train_flops=flops,
    train_gflop_per_s=flops / float(np.median(train)) / 1e9,
    model=dict(b["config"].model),
  )
  return out


def time_ntng_in_child(name: str, args) -> dict:
  """`time_ntng` in a fresh process whose XLA_FLAGS carry the width-keyed policy of the shape
  (`ntng_jax.xla_policy`, as the launchers set it): XLA fixes its flags when the backend starts."""
  family, size = SHAPES[name][:2]
  env = dict(os.environ)
  xla_policy.apply(int(step_time.get_config(family, f"size={size}").model.hidden_size), env)
  cmd = [sys.executable, os.path.abspath(__file__), f"--one_shape={name}"]
  cmd += [f"--steps={args.steps}", f"--warmup={args.warmup}"]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
  lines = [x for x in proc.stdout.splitlines() if x.startswith(_RESULT)]
  if proc.returncode != 0 or not lines:
    raise SystemExit(f"timing {name} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
  return dict(json.loads(lines[-1][len(_RESULT) :]), xla_flags=env.get("XLA_FLAGS", ""))


_RESULT = "NTNG_RESULT "


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--shapes", default=",".join(SHAPES))
  parser.add_argument("--steps", type=int, default=3, help="timed steps per round (median)")
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--threads", type=int, default=2, help="torch threads")
  parser.add_argument(
    "--peer_bench", default=os.path.join(REPO, "..", "shared", "tools", "peer_bench")
  )
  parser.add_argument(
    "--peer_venv",
    default=os.path.join(REPO, "..", "peer_venv"),
    help="venv with the harness's requirements (torch)",
  )
  parser.add_argument(
    "--peer_dir",
    default=os.environ.get("PEER_DIR", os.path.join(REPO, "..", "peer_src")),
    help="the original code's checkout (holds bert/ and t5/); $PEER_DIR",
  )
  parser.add_argument("--out", default="")
  parser.add_argument("--one_shape", default="", help=argparse.SUPPRESS)  # the child's job
  args = parser.parse_args()
  if args.one_shape:
    print(_RESULT + json.dumps(time_ntng(args.one_shape, args)), flush=True)
    return
  for attr in ("peer_bench", "peer_venv", "peer_dir"):
    path = os.path.abspath(getattr(args, attr))
    if not os.path.exists(path):
      raise SystemExit(f"--{attr} {path} does not exist; pass the right path.")
    setattr(args, attr, path)
  if not os.path.exists(peer_python(args)):
    raise SystemExit(
      f"--peer_venv {args.peer_venv} has no bin/python; create it as "
      f"{args.peer_bench}/README.md says."
    )
  shapes = args.shapes.split(",")
  started = datetime.datetime.now(datetime.timezone.utc)
  result = dict(
    date=started.isoformat(timespec="seconds"),
    machine=platform.processor() or platform.machine(),
    cpus=os.cpu_count(),
    jax=jax.__version__,
    command=" ".join(sys.argv),
    loadavg_start=os.getloadavg(),
    peak_start=dict(peer=peer_peak(args), jax=jax_peak()),
    rounds=[],
  )
  print(json.dumps(dict(peak_start=result["peak_start"])), flush=True)
  for r in range(args.rounds):
    row = {}
    for name in shapes:
      order = ("peer", "ntng") if r % 2 == 0 else ("ntng", "peer")
      got = {}
      for who in order:
        got[who] = run_peer(args, name) if who == "peer" else time_ntng_in_child(name, args)
      row[name] = dict(
        order=order,
        loadavg=os.getloadavg()[0],
        peer_step_s=got["peer"]["step_s_median"],
        peer_fwd_s=got["peer"]["fwd_s_median"],
        ntng_step_s=got["ntng"]["step_s_median"],
        ntng_fwd_s=got["ntng"]["fwd_s_median"],
        step_ratio=got["ntng"]["step_s_median"] / got["peer"]["step_s_median"],
        fwd_ratio=got["ntng"]["fwd_s_median"] / got["peer"]["fwd_s_median"],
        peer_params=got["peer"]["params"],
        ntng_params=got["ntng"]["params"],
        ntng_train_gflop_per_s=got["ntng"]["train_gflop_per_s"],
        ntng_xla_flags=got["ntng"]["xla_flags"],
        peer_train_gflop_per_s=got["peer"]["train_gflop_per_s"],
        peer_all=dict(step=got["peer"]["step_s_all"], fwd=got["peer"]["fwd_s_all"]),
        ntng_all=dict(step=got["ntng"]["step_s_all"], fwd=got["ntng"]["fwd_s_all"]),
      )
      print(json.dumps(dict(round=r, shape=name, **row[name])), flush=True)
    result["rounds"].append(row)
  result["peak_end"] = dict(peer=peer_peak(args), jax=jax_peak())
  result["loadavg_end"] = os.getloadavg()
  summary = {}
  for name in shapes:
    rows = [rd[name] for rd in result["rounds"]]
    med = lambda key: float(np.median([x[key] for x in rows]))
    summary[name] = dict(
      peer_step_s=med("peer_step_s"),
      ntng_step_s=med("ntng_step_s"),
      peer_fwd_s=med("peer_fwd_s"),
      ntng_fwd_s=med("ntng_fwd_s"),
      step_ratio_of_medians=med("ntng_step_s") / med("peer_step_s"),
      fwd_ratio_of_medians=med("ntng_fwd_s") / med("peer_fwd_s"),
      step_ratio_median=med("step_ratio"),
      fwd_ratio_median=med("fwd_ratio"),
      step_ratios=[round(x["step_ratio"], 3) for x in rows],
      fwd_ratios=[round(x["fwd_ratio"], 3) for x in rows],
      ntng_train_gflop_per_s=med("ntng_train_gflop_per_s"),
    )
  result["summary"] = summary
  print(
    json.dumps(
      dict(summary=summary, peak_end=result["peak_end"], loadavg_end=result["loadavg_end"])
    ),
    flush=True,
  )
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
