"""Train-step time per (model, size, batch): prints one JSON line per configuration.

  python benchmarks/step_time.py                                   # tiny and small, CPU, f32
  python benchmarks/step_time.py --models=bert:base:128,t5:base:144 --dtype=bfloat16 \
      --peak_tflops=989                                            # an H100, bf16 dense peak

Timed: the project's jitted `train_step` (forward, loss, backward, global-norm clip, optimizer
update, state donated) on a fixed synthetic batch, median over `--repeats` steps after `--warmup`
untimed ones (compile excluded).

Model FLOPs per step (the peer_bench convention, so the two are comparable): every weight costs
6 FLOPs per token it is applied to in a training step (2 forward, 4 backward); embedding look-ups
and attention score/softmax FLOPs are not counted.
  BERT: 6 · (body · B·S + head · B·P), head = MLM dense + tied decoder, P = masked positions;
  T5:   6 · (encoder · B·S_in + (decoder + lm_head) · B·S_tgt);
  GPT:  6 · (body + tied head) · B·S.
MFU = model FLOPs / step time / peak, when `--peak_tflops` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import get_config  # noqa: E402
from ntng_jax import partitioning  # noqa: E402
from ntng_jax.optim import build_optimizer  # noqa: E402
from ntng_jax.train import programs  # noqa: E402


def synthetic_batch(config, batch_size: int, rng: np.random.Generator) -> dict:
  """A batch in the model's format with random ids (timing does not depend on the values)."""
  V, S = config.model.vocab_size, config.data.seq_len
  if config.model.family == "bert":
    P = round(0.15 * S) + 1
    return dict(
      input_ids=rng.integers(7, V, (batch_size, S), dtype=np.int32),
      mlm_positions=np.sort(rng.integers(0, S, (batch_size, P)), 1).astype(np.int32),
      mlm_labels=rng.integers(7, V, (batch_size, P), dtype=np.int32),
      mlm_weights=np.ones((batch_size, P), np.float32),
      example_id=np.arange(batch_size, dtype=np.int32),
    )
  if config.model.family == "gpt":
    tokens = rng.integers(3, V, (batch_size, S + 1), dtype=np.int32)
    return dict(
      input_ids=tokens[:, :-1],
      targets=tokens[:, 1:],
      target_weights=np.ones((batch_size, S), np.float32),
      example_id=np.arange(batch_size, dtype=np.int32),
    )
  from ntng_jax.data.objectives import compute_input_and_target_lengths

  _, St = compute_input_and_target_lengths(S, 0.15, 3.0)
  targets = rng.integers(3, V, (batch_size, St), dtype=np.int32)
  return dict(
    encoder_input_ids=rng.integers(3, V, (batch_size, S), dtype=np.int32),
    decoder_input_ids=np.pad(targets[:, :-1], ((0, 0), (1, 0))),
    targets=targets,
    target_weights=np.ones((batch_size, St), np.float32),
    example_id=np.arange(batch_size, dtype=np.int32),
  )


def param_groups(params) -> dict:
  """Parameter counts: embedding (token tables), positions (GPT), head (BERT MLM dense / T5
  lm_head), encoder, decoder (T5; GPT's layers), other (BERT layers, norms)."""
  out = dict(embedding=0, positions=0, head=0, encoder=0, decoder=0, other=0)
  for path, x in jax.tree_util.tree_leaves_with_path(params):
    key = jax.tree_util.keystr(path)
    n = int(np.prod(x.shape))
    if key.startswith("['position']"):  # GPT's learned positions: a look-up, no FLOPs
      out["positions"] += n
    elif "embed'" in key and "embedding" in key:
      out["embedding"] += n
    elif "['head']" in key or "lm_head" in key:
      out["head"] += n
    elif "['encoder']" in key:
      out["encoder"] += n
    elif "['decoder']" in key:
      out["decoder"] += n
    else:
      out["other"] += n
  return out


def model_flops(config, groups: dict, batch: dict) -> tuple[float, str]:
  B = batch["example_id"].shape[0]
  if config.model.family == "bert":
    S, P = batch["input_ids"].shape[1], batch["mlm_positions"].shape[1]
    body = groups["encoder"] + groups["other"]
    head = groups["head"] + groups["embedding"]  # the decoder is tied to the embedding
    return 6.0 * (body * B * S + head * B * P), "6*(body*B*S + (head+tied_decoder)*B*P)"
  if config.model.family == "gpt":  # every position predicts through the tied embedding
    S = batch["input_ids"].shape[1]
    body = groups["encoder"] + groups["decoder"] + groups["other"] + groups["head"]
    return 6.0 * (body + groups["embedding"]) * B * S, "6*(body+tied_head)*B*S"
  S_in, S_t = batch["encoder_input_ids"].shape[1], batch["targets"].shape[1]
  enc = groups["encoder"] + groups["other"]
  dec = groups["decoder"] + groups["head"]
  return 6.0 * (enc * B * S_in + dec * B * S_t), "6*(encoder*B*S_in + (decoder+lm_head)*B*S_tgt)"


def build(
  family: str,
  size: str,
  batch_size: int,
  micro_batch: int = 0,
  dtype: str = "float32",
  seq_len: int = 0,
  model: dict | None = None,
) -> dict:
  """The project's jitted train step at one shape: dict(config, built, state, batch (on the
  mesh), batch_np, mesh, controls, rng). `seq_len` 0 keeps the size's; `model` overrides
  model fields (e.g. attention_impl)."""
  config = get_config(family, f"size={size}")
  config.train.batch_size = batch_size
  config.train.micro_batch_size = min(micro_batch or batch_size, batch_size)
  config.train.compute_dtype = dtype
  if seq_len:
    config.data.seq_len = seq_len
  for key, value in (model or {}).items():
    config.model[key] = value
  mesh = partitioning.make_mesh(config.mesh)
  tx = build_optimizer(config.optim)
  batch_np = synthetic_batch(config, batch_size, np.random.default_rng(0))
  example = {k: v[: config.train.micro_batch_size] for k, v in batch_np.items()}
  built = programs.build_programs(
    config, programs.model_at_depth(config, config.model.num_layers), tx, mesh, example
  )
  state = programs.init_state(built, tx, mesh, example, seed=0)
  return dict(
    config=config,
    built=built,
    state=state,
    batch_np=batch_np,
    mesh=mesh,
    batch=partitioning.global_batch(mesh, batch_np),
    controls={"learning_rate": np.float32(1e-4)},
    rng=jax.random.PRNGKey(0),
  )


def time_config(family: str, size: str, batch_size: int, args) -> dict:
  b = build(family, size, batch_size, args.micro_batch, args.dtype)
  config, built, state, batch_np, mesh = (
    b["config"],
    b["built"],
    b["state"],
    b["batch_np"],
    b["mesh"],
  )
  batch, controls, rng = b["batch"], b["controls"], b["rng"]
  times = []
  with partitioning.activate(mesh):
    for i in range(args.warmup + args.repeats):
      t0 = time.perf_counter()
      state, metrics = built.train_step(state, batch, rng, controls)
      jax.block_until_ready(metrics)
      if i >= args.warmup:
        times.append(time.perf_counter() - t0)
  groups = param_groups(state.params)
  flops, formula = model_flops(config, groups, batch_np)
  step_s = float(np.median(times))
  tokens = batch_size * (
    batch_np["input_ids"].shape[1]
    if "input_ids" in batch_np
    else batch_np["encoder_input_ids"].shape[1] + batch_np["targets"].shape[1]
  )
  out = dict(
    model=family,
    size=size,
    batch=batch_size,
    micro_batch=config.train.micro_batch_size,
    dtype=args.dtype,
    params=int(sum(groups.values())),
    step_s=step_s,
    step_s_min=float(np.min(times)),
    step_s_all=[round(t, 5) for t in times],
    tokens_per_step=tokens,
    tokens_per_s=tokens / step_s,
    model_gflop_per_step=flops / 1e9,
    gflop_per_s=flops / step_s / 1e9,
    flops_formula=formula,
    device=f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}",
    num_devices=jax.device_count(),
    jax_version=jax.__version__,
  )
  if args.peak_tflops:
    out["mfu"] = flops / step_s / (args.peak_tflops * 1e12)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--models",
    default="bert:tiny:32,bert:small:32,t5:tiny:32,t5:small:16",
    help="comma-separated family:size:batch",
  )
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--micro_batch", type=int, default=0, help="0 = no accumulation")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument(
    "--peak_tflops",
    type=float,
    default=0.0,
    help="device peak for MFU (e.g. 989 for H100 bf16 dense)",
  )
  args = parser.parse_args()
  for spec in args.models.split(","):
    family, size, batch = spec.split(":")
    print(json.dumps(time_config(family, size, int(batch), args)), flush=True)


if __name__ == "__main__":
  main()
