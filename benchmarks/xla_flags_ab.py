"""Interleaved A/B timing of the train step under different XLA flags / environments.

  python benchmarks/xla_flags_ab.py --model=bert:small:32:128 --rounds=7 \
      --variants='base:;noxnn:--xla_cpu_use_xnnpack=false'

XLA flags are read once per process, so every variant is a worker process of its own (its
`XLA_FLAGS` = the variant's flags; `NAME=VALUE` items set other environment variables, e.g.
`AB_TREE=/path/to/other/checkout` to time that checkout's code). All
workers build the model first; then the driver asks each in turn for one timed train step per
round, so machine load hits them alike. Prints per-variant medians and ratios to the first
variant (medians of per-round ratios) as one JSON line; `--out` appends it to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(spec: str, model_overrides: str) -> None:
  # AB_TREE (a variant's environment) times another checkout of the project, e.g. the code
  # before a change: its benchmarks/step_time.py puts that checkout first on sys.path.
  sys.path.insert(0, os.path.join(os.environ.get("AB_TREE", os.path.dirname(HERE)), "benchmarks"))
  import jax
  import step_time

  from ntng_jax import partitioning

  family, size, batch, seq = spec.split(":")
  overrides = {
    k: (int(v) if v.lstrip("-").isdigit() else v)
    for k, v in (kv.split("=", 1) for kv in filter(None, model_overrides.split(",")))
  }
  b = step_time.build(family, size, int(batch), seq_len=int(seq), model=overrides)
  with partitioning.activate(b["mesh"]):
    state = b["state"]
    state, m = b["built"].train_step(state, b["batch"], b["rng"], b["controls"])
    jax.block_until_ready(m)
    print("ready", flush=True)
    for line in sys.stdin:
      if line.strip() != "step":
        break
      t0 = time.perf_counter()
      state, m = b["built"].train_step(state, b["batch"], b["rng"], b["controls"])
      jax.block_until_ready(m)
      print(json.dumps(dict(s=time.perf_counter() - t0, loss=float(m["train_loss"]))), flush=True)


def parse_variants(spec: str) -> dict:
  out = {}
  for item in filter(None, spec.split(";")):
    name, _, rest = item.partition(":")
    flags, env = [], {}
    for tok in rest.split():
      if tok.startswith("--"):
        flags.append(tok)
      else:
        k, _, v = tok.partition("=")
        env[k] = v
    out[name] = (flags, env)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="bert:small:32:128")
  parser.add_argument("--model_override", default="", help="field=value,... for every variant")
  parser.add_argument("--variants", default="base:")
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  if args.worker:
    return worker(args.model, args.model_override)
  variants = parse_variants(args.variants)
  procs = {}
  for name, (flags, env) in variants.items():
    e = dict(os.environ, **env)
    e["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", "")] + flags).strip()
    cmd = [sys.executable, __file__, "--worker", "--model", args.model]
    cmd += ["--model_override", args.model_override]
    procs[name] = subprocess.Popen(
      cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=e, text=True
    )
    # Build one at a time: compiles would otherwise fight over the two cores.
    line = procs[name].stdout.readline()
    if line.strip() != "ready":
      raise SystemExit(f"variant {name} failed to start: {line!r}")
  times = {n: [] for n in variants}
  losses = {n: [] for n in variants}
  load = []
  for r in range(args.rounds):
    order = list(variants) if r % 2 == 0 else list(variants)[::-1]
    for n in order:
      procs[n].stdin.write("step\n")
      procs[n].stdin.flush()
      got = json.loads(procs[n].stdout.readline())
      times[n].append(got["s"])
      losses[n].append(got["loss"])
    load.append(os.getloadavg()[0])
  for p in procs.values():
    p.stdin.write("quit\n")
    p.stdin.flush()
    p.wait()
  first = next(iter(variants))
  res = dict(model=args.model, model_override=args.model_override, rounds=args.rounds)
  res["loadavg"] = [round(min(load), 2), round(max(load), 2)]
  for n in variants:
    ratios = [a / b for a, b in zip(times[n], times[first])]
    res[n] = dict(
      flags=" ".join(variants[n][0]),
      env=variants[n][1],
      median_s=round(float(np.median(times[n])), 4),
      ratio=round(float(np.median(ratios)), 3),
      round_ratios=[round(x, 3) for x in ratios],
      last_loss=losses[n][-1],
    )
  print(json.dumps(res), flush=True)
  if args.out:
    with open(args.out, "a") as f:
      f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
  main()
