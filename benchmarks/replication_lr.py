"""The learning-rate sweeps of Replication II (benchmarks/replication2.sh lr, t5_lr): one row per
run under ROOT/<method>-lr<LR>/, the best peak LR per method by held-out validation loss.

  python benchmarks/replication_lr.py benchmarks/results/replication/lr

Writes ROOT/summary.json and prints a markdown table; runs without a final summary are listed as
unfinished and never chosen.
"""

from __future__ import annotations

import glob
import json
import os
import sys


def rows(root: str) -> list[dict]:
  out = []
  for summary_path in sorted(
    glob.glob(os.path.join(root, "*", "*", "budget-*", "seed-*", "summary.json"))
  ):
    workdir = os.path.dirname(summary_path)
    with open(summary_path) as f:
      summary = json.load(f)
    with open(os.path.join(workdir, "config.json")) as f:
      config = json.load(f)
    losses = summary.get("final_validation_losses") or {}
    out.append(
      dict(
        method=summary["method"],
        learning_rate=config["optim"]["learning_rate"],
        steps=summary["steps"],
        stopped_because=summary["stopped_because"],
        final_train_loss=summary["final_train_loss"],
        heldout=losses.get("heldout"),
        shakespeare=losses.get("shakespeare"),
        workdir=os.path.relpath(workdir, root),
      )
    )
  return sorted(out, key=lambda r: (r["method"], r["learning_rate"]))


def best(table: list[dict]) -> dict:
  chosen = {}
  for r in table:
    if r["stopped_because"] == "budget" and r["heldout"] is not None:
      if r["method"] not in chosen or r["heldout"] < chosen[r["method"]]["heldout"]:
        chosen[r["method"]] = r
  return {m: r["learning_rate"] for m, r in chosen.items()}


def main(root: str) -> None:
  table = rows(root)
  chosen = best(table)
  with open(os.path.join(root, "summary.json"), "w") as f:
    json.dump(dict(runs=table, best_learning_rate=chosen), f, indent=1)
  print("| method | peak LR | steps | held-out loss | Shakespeare loss | train loss |")
  print("|---|---|---|---|---|---|")
  for r in table:
    mark = "**" if chosen.get(r["method"]) == r["learning_rate"] else ""
    done = r["stopped_because"] == "budget"
    print(
      f"| {r['method']} | {mark}{r['learning_rate']:g}{mark} | {r['steps']:,} |"
      f" {r['heldout']:.3f} | {r['shakespeare']:.3f} | {r['final_train_loss']:.3f} |"
      if done
      else f"| {r['method']} | {r['learning_rate']:g} | unfinished ({r['stopped_because']}) | | | |"
    )


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/replication/lr")
