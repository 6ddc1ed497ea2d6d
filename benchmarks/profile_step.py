"""Per-op profile of the project's train step on CPU: where the time goes, by category.

  python benchmarks/profile_step.py --models=bert:small:32:128,t5:small:16:512 --steps=3 \
      --out=benchmarks/results/profile_cpu.json [--model_override attention_impl=einsum ...]

Runs `--steps` jitted train steps (after a warm-up) under `jax.profiler` with a Perfetto trace,
takes every XLA CPU thunk event (one per executed HLO instruction or fusion, named by
`hlo_op`), maps each to the compiled HLO's instruction and its metadata (`op_name`, the JAX
source path through the Flax modules), and sums the events' time per category:
attention (score/softmax/value), dense matmuls, MLM gather + tied decoder / lm_head, loss,
norms, embedding, optimizer update, casts/copies, control flow (scan/cond bookkeeping).
Container events (while, conditional, call) are not counted, their bodies' events are. Time is
summed over both worker threads, so the total can exceed the wall time of a step.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import step_time  # noqa: E402

from ntng_jax import partitioning  # noqa: E402

CONTAINERS = {"while", "conditional", "call"}

# (category, regex on the op_name metadata + opcode), first match wins.
RULES = [
  (
    "attention score/softmax/value",
    r"bqhd|bhqk|softmax|dot_product_attention|attention"
    r"|rel_bias|relative|padding_bias|causal",
  ),
  (
    "MLM gather + tied decoder / lm_head",
    r"take_along_axis|attend|lm_head|/head/|"
    r"word_embed.*dot_general",
  ),
  (
    "loss (softmax cross-entropy)",
    r"cross_entropy|log_softmax|logsumexp|token_losses|"
    r"mean_token_loss",
  ),
  ("dense matmuls (qkv/out/MLP)", r"dot_general|dot\b|convolution"),
  ("norms", r"LayerNorm|RMSNorm|norm1|norm2|_norm|rsqrt"),
  ("MLP activation", r"gelu|erf|tanh"),
  ("embedding lookup", r"embed|take|gather|position"),
  (
    "scan/cond bookkeeping",
    r"^(dynamic-slice|dynamic-update-slice|copy|tuple|"
    r"get-tuple-element)\b|dynamic_slice|dynamic_update_slice|"
    r"add_any|copy_bitcast",
  ),
  ("casts/copies/transposes", r"convert|copy|transpose|broadcast|reshape|bitcast"),
]


def _clean(desc: str) -> str:
  """Drops the scan/jit scaffolding every op_name carries, keeping module path and primitive."""
  return re.sub(r"jit\([\w]+\)/|while/body/|while/cond/|closed_call/|parameter:\S*", "", desc)


def parse_hlo(text: str) -> dict:
  """{instruction name: (opcode, 'op_name | opcodes of its fused computation')}."""
  comps, current = {}, None
  instr = {}
  for line in text.splitlines():
    m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
    if m and not line.startswith(" "):
      current = m.group(1)
      comps[current] = []
      continue
    m = re.match(r"^\s+(?:ROOT )?%?([\w.\-]+) = .*? ([\w\-]+)\(", line)
    if m and current is not None:
      name, opcode = m.group(1), m.group(2)
      op_name = re.search(r'op_name="([^"]*)"', line)
      calls = re.search(r"calls=%?([\w.\-]+)", line)
      comps[current].append(
        (name, opcode, op_name.group(1) if op_name else "", calls.group(1) if calls else None)
      )
  for comp, rows in comps.items():
    for name, opcode, op_name, calls in rows:
      inner = ""
      if calls and calls in comps and opcode == "fusion":
        inner = " ".join(f"{o}:{n}" for _, o, n, _ in comps[calls])
      instr[name] = (opcode, _clean(f"{opcode}:{op_name} {inner}"))
  return instr


def categorize(opcode: str, desc: str) -> str:
  if opcode in CONTAINERS:
    return "container"
  if not re.search(r"jvp\(|transpose\(|Bert|T5", desc):  # outside the model's forward/backward
    return "optimizer update, grad norm, accumulation"
  for cat, pattern in RULES:
    if re.search(pattern, desc):
      return cat
  return "other elementwise"


def profile(fn, args, steps: int, hlo_text: str) -> dict:
  instr = parse_hlo(hlo_text)
  out = fn(*args)
  jax.block_until_ready(out)
  args = (out[0],) + tuple(args[1:]) if isinstance(out, tuple) and len(out) == 2 else args
  tmp = tempfile.mkdtemp(prefix="ntng_prof_")
  jax.profiler.start_trace(tmp, create_perfetto_trace=True)
  t0 = time.perf_counter()
  for _ in range(steps):
    out = fn(*args)
    jax.block_until_ready(out)
    if isinstance(out, tuple) and len(out) == 2 and hasattr(out[0], "params"):
      args = (out[0],) + tuple(args[1:])
  wall = (time.perf_counter() - t0) / steps
  jax.profiler.stop_trace()
  path = sorted(glob.glob(f"{tmp}/**/*.trace.json.gz", recursive=True))[-1]
  events = json.load(gzip.open(path))["traceEvents"]
  per_cat, per_op = collections.Counter(), collections.Counter()
  unknown = 0.0
  for e in events:
    a = e.get("args") or {}
    if e.get("ph") != "X" or "hlo_op" not in a:
      continue
    name = a["hlo_op"]
    opcode, desc = instr.get(name, ("?", name))
    if name not in instr:
      unknown += e["dur"]
    cat = categorize(opcode, desc)
    if cat == "container":
      continue
    per_cat[cat] += e["dur"] / 1e6 / steps
    per_op[name] += e["dur"] / 1e6 / steps
  total = sum(per_cat.values())
  return dict(
    wall_s=wall,
    op_s=total,
    categories={k: round(v, 5) for k, v in per_cat.most_common()},
    fractions={k: round(v / total, 4) for k, v in per_cat.most_common()},
    top_ops=[
      (k, round(v, 5), categorize(*instr.get(k, ("?", k))), instr.get(k, ("?", ""))[1][:160])
      for k, v in per_op.most_common(15)
    ],
    unmatched_s=unknown / 1e6 / steps,
  )


def parse_override(items):
  out = {}
  for item in items or []:
    key, _, value = item.partition("=")
    out[key] = {"true": True, "false": False}.get(value.lower(), value)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--models",
    default="bert:small:32:128,t5:small:16:512",
    help="comma-separated family:size:batch:seq_len",
  )
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--forward", action="store_true", help="profile the scoring pass too")
  parser.add_argument("--model_override", action="append", help="model field=value")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  results = []
  for spec in args.models.split(","):
    family, size, batch, seq = spec.split(":")
    b = step_time.build(
      family, size, int(batch), seq_len=int(seq), model=parse_override(args.model_override)
    )
    with partitioning.activate(b["mesh"]):
      step = b["built"].train_step
      call = (b["state"], b["batch"], b["rng"], b["controls"])
      hlo = step.lower(*call).compile().as_text()
      res = dict(
        model=family,
        size=size,
        batch=int(batch),
        seq_len=int(seq),
        kind="train_step",
        model_overrides=parse_override(args.model_override),
        **profile(step, call, args.steps, hlo),
      )
      print(json.dumps(res), flush=True)
      results.append(res)
  if args.out:
    with open(args.out, "a") as f:
      for r in results:
        f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
  main()
