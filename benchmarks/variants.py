"""A/B timing of model-config variants of the train step (and scoring pass), interleaved.

  python benchmarks/variants.py --models=bert:small:32:128,t5:small:16:512 \
      --variants='base:;unroll:layer_loop=unroll;xla:attention_impl=xla' --rounds=5

Each variant is `name:field=value,field=value` of model overrides (empty = the defaults). All
variants of one shape are built in this process and timed round-robin, one step each per round,
so machine load hits them alike; prints per-variant medians and the ratio to the first variant
as JSON lines (`--out` appends them to a file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import step_time  # noqa: E402

from ntng_jax import partitioning  # noqa: E402
from ntng_jax.train import programs  # noqa: E402


def parse_variants(spec: str) -> dict:
  out = {}
  for item in filter(None, spec.split(";")):
    name, _, fields = item.partition(":")
    overrides = {}
    for f in filter(None, fields.split(",")):
      k, _, v = f.partition("=")
      overrides[k] = {"true": True, "false": False}.get(v.lower(), v)
    out[name] = overrides
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="bert:small:32:128,t5:small:16:512")
  parser.add_argument("--variants", default="base:;unroll:layer_loop=unroll")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--forward", action="store_true", help="also time the scoring pass")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  variants = parse_variants(args.variants)
  for spec in args.models.split(","):
    family, size, batch, seq = spec.split(":")
    built = {
      n: step_time.build(family, size, int(batch), seq_len=int(seq), model=o)
      for n, o in variants.items()
    }
    mesh = next(iter(built.values()))["mesh"]
    times = {n: {"train": [], "forward": []} for n in variants}
    with partitioning.activate(mesh):
      score = {n: programs.score_program(b["built"].model, "float32") for n, b in built.items()}
      for r in range(args.rounds + 1):  # round 0 compiles and warms up
        for n, b in built.items():
          t0 = time.perf_counter()
          b["state"], m = b["built"].train_step(b["state"], b["batch"], b["rng"], b["controls"])
          jax.block_until_ready(m)
          if r:
            times[n]["train"].append(time.perf_counter() - t0)
          if args.forward:
            t0 = time.perf_counter()
            jax.block_until_ready(score[n](b["state"].params, b["batch"]))
            if r:
              times[n]["forward"].append(time.perf_counter() - t0)
    first = next(iter(variants))
    for n in variants:
      res = dict(
        model=family,
        size=size,
        batch=int(batch),
        seq_len=int(seq),
        variant=n,
        overrides=variants[n],
        loadavg=os.getloadavg()[0],
      )
      for kind in ("train", "forward"):
        if times[n][kind]:
          med = float(np.median(times[n][kind]))
          res[f"{kind}_s"] = med
          res[f"{kind}_all"] = [round(t, 4) for t in times[n][kind]]
          res[f"{kind}_ratio"] = med / float(np.median(times[first][kind]))
          res[f"{kind}_round_ratios"] = [
            round(a / b, 3) for a, b in zip(times[n][kind], times[first][kind])
          ]
      print(json.dumps(res), flush=True)
      if args.out:
        with open(args.out, "a") as f:
          f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
  main()
