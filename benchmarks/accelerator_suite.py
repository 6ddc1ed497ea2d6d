"""The accelerator suite (issue 17): one run on one GPU or TPU host writes one JSON of
throughput figures; `benchmarks/accelerator_suite.sh` runs it within 8 minutes.

  python benchmarks/accelerator_suite.py --out=suite.json             # the device run
  python benchmarks/accelerator_suite.py --smoke --out=/tmp/s.json    # tiny shapes, CPU, ~2 min

Items (in this order; each is skipped, and says so, once `--budget_s` is spent):
- `paper_shapes`: BERT base 128 × 128 and T5 base 72 × (512 + 114) per step, bf16 compute,
  one micro-batch: step time, model FLOPs and MFU (`step_time.time_config`);
- `layer_drop`: BERT base (16 layers) with k of 16 kept, k = 4, 8, 12, 16, for the `cond` and
  `compact` paths (`model.layer_drop_impl`, remat on as the method sets it), each as a fraction
  of the plain full step (baseline program, no keep), timed in interleaved rounds;
- `scoring`: the scoring pass (forward only) per example against the train step per example at
  the same micro-batch, and at a 4× larger scoring batch;
- `pretrain`: `python -m launch.pretrain` of BERT base on the synthetic corpus for `--pretrain_s`
  seconds of training (a fixed RST table, so nothing is calibrated); tokens/s between the first
  and last logged steps (compile excluded);
- `optimizers`: Lion and Sophia-G step time against AdamW (`optimizer_overhead.make_runner`);
- `micro_batch_sweep`: the same step at larger micro-batches; the best MFU is reported.

FLOPs: the convention of `benchmarks/step_time.py` (attention scores left out); each timed step
also reports `attention_gflop_per_step` (QKᵀ and PV matmuls, 3 × forward) and the MFU with them.
Peak: the bf16 dense peak of the device kind (`PEAK_TFLOPS`), or `--peak_tflops`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [REPO, HERE]

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optimizer_overhead  # noqa: E402
import step_time  # noqa: E402

from configs import get_config  # noqa: E402
from ntng_jax import partitioning, rst  # noqa: E402
from ntng_jax.train import programs  # noqa: E402

# bf16 dense peak TFLOP/s by device-kind substring (vendor data sheets; first match wins).
PEAK_TFLOPS = (
  ("h100 pcie", 756.0),
  ("h100", 989.4),  # SXM
  ("h200", 989.4),
  ("gh200", 989.4),
  ("a100", 312.0),
  ("tpu v6", 918.0),
  ("tpu v5p", 459.0),
  ("tpu v5", 197.0),  # v5e / v5 lite
  ("tpu v4", 275.0),
)

FULL = dict(
  bert=dict(size="base", batch=128, sweep=(256, 512)),
  t5=dict(size="base", batch=72, sweep=(144,)),
  dtype="bfloat16",
  num_layers=None,
  warmup=2,
  repeats=10,
  rounds=5,
  pretrain_size="base",
)
SMOKE = dict(
  bert=dict(size="tiny", batch=8, sweep=(16,)),
  t5=dict(size="tiny", batch=4, sweep=(8,)),
  dtype="float32",
  num_layers=4,
  warmup=1,
  repeats=2,
  rounds=2,
  pretrain_size="tiny",
)
ITEMS = ("paper_shapes", "layer_drop", "scoring", "pretrain", "optimizers", "micro_batch_sweep")


def device_peak(kind: str) -> float | None:
  """The bf16 dense peak (TFLOP/s) of a device kind, or None if unknown (e.g. a CPU)."""
  kind = kind.lower()
  return next((peak for key, peak in PEAK_TFLOPS if key in kind), None)


def attention_flops(config, batch_np: dict) -> float:
  """Training FLOPs of the attention score and context matmuls (3 × forward, forward =
  4 · B · S_q · S_k · H·d per attention), which the step_time convention leaves out."""
  m = config.model
  width = m.num_heads * m.head_dim
  B = batch_np["example_id"].shape[0]
  if m.family == "bert":
    S = batch_np["input_ids"].shape[1]
    pairs = S * S
  else:
    S, T = batch_np["encoder_input_ids"].shape[1], batch_np["targets"].shape[1]
    pairs = S * S + T * T + T * S
  return 3.0 * 4.0 * B * pairs * width * m.num_layers


def timed(fn, repeats: int) -> list[float]:
  out = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    out.append(time.perf_counter() - t0)
  return out


class Runner:
  """One jitted train step (state donated) of `step_time.build`, callable with a keep."""

  def __init__(self, family, size, batch, dtype, model=None):
    b = step_time.build(family, size, batch, dtype=dtype, model=model)
    self.__dict__.update(b)
    self.keep = None

  def step(self):
    controls = dict(self.controls)
    if self.keep is not None:
      controls["keep"] = self.keep
    with partitioning.activate(self.mesh):
      self.state, metrics = self.built.train_step(self.state, self.batch, self.rng, controls)
    return metrics


# -------------------------------------------------------------------------------------------------
# Items.


def step_figures(family, spec, batch, s, peak) -> dict:
  args = SimpleNamespace(
    micro_batch=0, dtype=s["dtype"], warmup=s["warmup"], repeats=s["repeats"], peak_tflops=peak
  )
  out = step_time.time_config(family, spec["size"], batch, args)
  out.pop("step_s_all", None)
  config = get_config(family, f"size={spec['size']}")
  batch_np = step_time.synthetic_batch(config, batch, np.random.default_rng(0))
  attn = attention_flops(config, batch_np)
  out["attention_gflop_per_step"] = attn / 1e9
  if peak:
    out["mfu_with_attention"] = (
      (out["model_gflop_per_step"] * 1e9 + attn) / out["step_s"] / (peak * 1e12)
    )
  return out


def paper_shapes(s, peak) -> dict:
  return {f: step_figures(f, s[f], s[f]["batch"], s, peak) for f in ("bert", "t5")}


def micro_batch_sweep(s, peak) -> dict:
  out = {}
  for family in ("bert", "t5"):
    rows = []
    for batch in s[family]["sweep"]:
      try:
        rows.append(step_figures(family, s[family], batch, s, peak))
      except Exception as e:  # noqa: BLE001 -- out of memory at this size: report, go on
        rows.append(dict(batch=batch, error=f"{type(e).__name__}: {str(e)[:200]}"))
    ok = [r for r in rows if "step_s" in r]
    best = max(ok, key=lambda r: r["tokens_per_s"]) if ok else None
    out[family] = dict(rows=rows, best=best)
  return out


def keep_rows(num_layers: int, k: int, seed: int = 0) -> np.ndarray:
  """bool [1, L] with k layers kept, chosen at random (a fixed seed)."""
  rng = np.random.default_rng([seed, k])
  keep = np.zeros(num_layers, bool)
  keep[rng.choice(num_layers, k, replace=False)] = True
  return keep[None]


def layer_drop(s, peak) -> dict:
  del peak
  spec, model = s["bert"], {}
  if s["num_layers"]:
    model["num_layers"] = s["num_layers"]
  plain = Runner("bert", spec["size"], spec["batch"], s["dtype"], model)
  L = int(plain.config.model.num_layers)
  ks = sorted({max(1, round(L * q)) for q in (0.25, 0.5, 0.75, 1.0)})
  impls = {}
  for impl in ("cond", "compact"):
    impls[impl] = Runner(
      "bert",
      spec["size"],
      spec["batch"],
      s["dtype"],
      {**model, "remat": True, "layer_drop_impl": impl},
    )
    impls[impl].keep = keep_rows(L, L)
  for r in (plain, *impls.values()):
    for _ in range(s["warmup"]):
      jax.block_until_ready(r.step())
  times = {"plain": []} | {(i, k): [] for i in impls for k in ks}
  for _ in range(s["rounds"]):
    times["plain"] += timed(plain.step, s["repeats"])
    for impl, r in impls.items():
      for k in ks:
        r.keep = keep_rows(L, k)
        times[(impl, k)] += timed(r.step, s["repeats"])
  full = float(np.median(times["plain"]))
  out = dict(num_layers=L, batch=spec["batch"], plain_step_s=full, acceptance="<= k/L + 0.10")
  for impl in impls:
    out[impl] = {
      str(k): dict(
        step_s=float(np.median(times[(impl, k)])),
        fraction_of_plain=float(np.median(times[(impl, k)])) / full,
        bound=k / L + 0.10,
      )
      for k in ks
    }
  return out


def scoring(s, peak) -> dict:
  del peak
  spec = s["bert"]
  B = spec["batch"]
  train = Runner("bert", spec["size"], B, s["dtype"])
  for _ in range(s["warmup"]):
    jax.block_until_ready(train.step())
  train_s = float(np.median(timed(train.step, s["repeats"])))
  out = dict(train_batch=B, train_step_s=train_s, train_s_per_example=train_s / B, rows=[])
  score = programs.score_program(
    train.built.model, s["dtype"], train.built.shardings.params, train.mesh
  )
  for n in (B, 4 * B):
    batch_np = step_time.synthetic_batch(train.config, n, np.random.default_rng(1))
    batch = partitioning.global_batch(train.mesh, batch_np)
    with partitioning.activate(train.mesh):
      fn = lambda: score(train.state.params, batch)  # noqa: E731
      timed(fn, s["warmup"])
      sec = float(np.median(timed(fn, s["repeats"])))
    out["rows"].append(
      dict(
        score_batch=n,
        score_s=sec,
        score_s_per_example=sec / n,
        vs_train_per_example=(sec / n) / (train_s / B),
      )
    )
  out["acceptance"] = "vs_train_per_example <= 0.25"
  return out


def optimizers(s, peak) -> dict:
  del peak
  spec = s["bert"]
  runners = {
    name: optimizer_overhead.make_runner("bert", spec["size"], spec["batch"], method, s["dtype"])
    for name, method in (("adamw", "baseline"), ("lion", "lion"), ("sophia", "sophia"))
  }
  for fn in runners.values():
    fn()  # compile, warm up
  times = {name: [fn() for _ in range(s["rounds"])] for name, fn in runners.items()}
  med = {name: float(np.median(v)) for name, v in times.items()}
  return dict(
    model="bert",
    size=spec["size"],
    batch=spec["batch"],
    update_interval=optimizer_overhead.K,
    step_s=med,
    lion_vs_adamw=med["lion"] / med["adamw"],
    sophia_vs_adamw=med["sophia"] / med["adamw"],
    paper_t5=dict(lion_vs_adamw=1.043 / 1.031, sophia_vs_adamw=1.156 / 1.031),
  )


def pretrain(s, peak, seconds: float, workdir: str, max_wait: float, cache: str | None) -> dict:
  """`launch.pretrain` of BERT on the synthetic corpus; stopped after `seconds` of training
  (between the first and last logged steps) or `max_wait` seconds from its start."""
  del peak
  size, dtype = s["pretrain_size"], s["dtype"]
  config = get_config("bert", f"size={size}")
  config.train.compute_dtype = dtype
  table = os.path.join(workdir, "table.json")
  L, mb = config.model.num_layers, config.train.micro_batch_size
  per_micro = 1.0 / (config.train.batch_size // mb)  # 1 RST second per full-depth step
  rst.save_table(
    rst.RSTTable(
      name="suite-fixed",
      unit_sequences=mb,
      train={n: per_micro * n / L for n in range(1, L + 1)},
      forward={n: per_micro / 3 * n / L for n in range(1, L + 1)},
      fingerprint=rst.step_shape_fingerprint(config),
    ),
    table,
  )
  run = os.path.join(workdir, "run")
  cmd = [
    sys.executable,
    "-m",
    "launch.pretrain",
    f"--config=configs/bert.py:size={size}",
    f"--workdir={run}",
    f"--config.rst.table={table}",
    f"--config.train.compute_dtype={dtype}",
    "--config.train.budget_hours=1000",
    "--config.train.log_every_steps=2",
    "--config.train.eval_every_rst_minutes=1e9",
    "--config.train.checkpoint_every_rst_minutes=1e9",
  ] + ([f"--config.train.compilation_cache_dir={cache}"] if cache else [])
  metrics = os.path.join(run, "metrics.jsonl")
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  records = []
  while proc.poll() is None:
    time.sleep(1.0)
    if os.path.exists(metrics):
      with open(metrics) as f:
        records = [r for r in map(json.loads, f.read().splitlines()[:-1]) if "train_loss" in r]
      if records and records[-1]["wall_seconds"] - records[0]["wall_seconds"] >= seconds:
        break
    if time.perf_counter() - t0 > max_wait:
      break
  if proc.poll() is None:
    proc.send_signal(signal.SIGINT)
    try:
      proc.wait(30)
    except subprocess.TimeoutExpired:
      proc.kill()
  log = proc.stdout.read().decode(errors="replace")[-2000:] if proc.stdout else ""
  if len(records) < 2:
    return dict(error="fewer than two logged steps", log_tail=log, command=" ".join(cmd))
  a, b = records[0], records[-1]
  wall = b["wall_seconds"] - a["wall_seconds"]
  return dict(
    size=size,
    batch_size=config.train.batch_size,
    micro_batch_size=mb,
    steps=b["step"] - a["step"],
    train_seconds=wall,
    tokens=b["tokens"] - a["tokens"],
    tokens_per_s=(b["tokens"] - a["tokens"]) / wall,
    first_logged_step_after_s=a["wall_seconds"],
    last_train_loss=b["train_loss"],
    command=" ".join(cmd),
  )


# -------------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default="accelerator_suite.json")
  p.add_argument("--smoke", action="store_true", help="tiny shapes, f32: a CPU check of every item")
  p.add_argument("--only", default=",".join(ITEMS), help="comma-separated items to run")
  p.add_argument("--budget_s", type=float, default=450.0, help="skip items started after this")
  p.add_argument("--pretrain_s", type=float, default=0.0, help="0: 60 (8 with --smoke)")
  p.add_argument("--peak_tflops", type=float, default=0.0, help="0: from the device kind")
  p.add_argument("--cache_dir", default="", help="persistent compilation cache ('' = off)")
  args = p.parse_args(argv)
  s = SMOKE if args.smoke else FULL
  only = [i for i in args.only.split(",") if i]
  unknown = sorted(set(only) - set(ITEMS))
  if unknown:
    p.error(f"--only: unknown items {unknown}; choose from {', '.join(ITEMS)}.")
  cache = programs.use_compilation_cache(args.cache_dir) if args.cache_dir else None
  dev = jax.devices()[0]
  peak = args.peak_tflops or device_peak(dev.device_kind)
  report = dict(
    suite="accelerator_suite",
    date_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    device=f"{dev.platform}:{dev.device_kind}",
    num_devices=jax.device_count(),
    jax_version=jax.__version__,
    smoke=args.smoke,
    peak_bf16_tflops=peak,
    peak_table_tflops=dict(PEAK_TFLOPS),
    flops_convention="benchmarks/step_time.py (attention scores left out)",
    compilation_cache=cache,
    items={},
  )
  start = time.perf_counter()
  seconds = args.pretrain_s or (8.0 if args.smoke else 60.0)
  for item in ITEMS:
    if item not in only:
      continue
    if time.perf_counter() - start > args.budget_s:
      report["items"][item] = dict(skipped=f"--budget_s={args.budget_s:g} spent")
      continue
    t0 = time.perf_counter()
    try:
      if item == "pretrain":
        with tempfile.TemporaryDirectory(prefix="suite_pretrain_") as wd:
          left = args.budget_s + 30 - (time.perf_counter() - start)
          result = pretrain(s, peak, seconds, wd, max(seconds + 30, left), cache)
      else:
        result = globals()[item](s, peak)
    except Exception as e:  # noqa: BLE001 -- one item failing must not lose the others
      result = dict(error=f"{type(e).__name__}: {str(e)[:500]}")
    result["item_seconds"] = time.perf_counter() - t0
    report["items"][item] = result
    report["total_seconds"] = time.perf_counter() - start
    with open(args.out + ".tmp", "w") as f:
      json.dump(report, f, indent=1)
    os.replace(args.out + ".tmp", args.out)
    print(f"[suite] {item}: {result['item_seconds']:.1f}s", file=sys.stderr, flush=True)
  return report


if __name__ == "__main__":
  main()
