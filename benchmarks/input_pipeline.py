"""Input-pipeline throughput from pre-tokenised shards, against what a train step consumes.

  python benchmarks/input_pipeline.py            # or: python -m benchmarks.input_pipeline

Builds (once, cached under --workdir) BERT shards (seq 128) and T5 shards (512 inputs / 114
targets, raw chunks of 568) from --corpus with `prepare_shards`, then times, in one process,
`Dataset.train_iterator` from the memory-mapped shards: row gather + uint16 -> int32 + masking
(BERT 15 % MLM) or span corruption (T5) + batching, over --seconds of batches. Then it times the
project's jitted train step (`ntng_jax.train.programs.build_programs`) of tiny BERT at seq 128 on
the same batch size, on this machine's default JAX device, and prints one JSON object
(the single-process figures are without prefetching; `*_prefetch` use worker threads):

  bert_mlm_128.tokens_per_s         B x 128 tokens of batches produced per second
  t5_span_512_114.tokens_per_s      B x 512 encoder tokens per second (also raw 568-token
                                    chunks and the trainer's 512 + 114 count)
  tiny_bert_train_step.tokens_per_s B x 128 tokens per second through the train step
  ratio_bert_pipeline_to_tiny_step  the first over the third (--sizes adds small/base)
  *_prefetch                        the same with `train_iterator(prefetch=2 W, workers=W)`
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from ntng_jax.data import build_dataset  # noqa: E402
from ntng_jax.data.shard_format import MANIFEST  # noqa: E402
from ntng_jax.data.shard_writer import prepare_shards  # noqa: E402

DEFAULT_CORPUS = REPO.parent / "shared" / "data" / "text" / "wikipedia_en" / "train.txt"


def _corpus(path: str, workdir: Path) -> str:
  if path and Path(path).exists():
    return path
  from ntng_jax.data import SyntheticCorpus  # fallback when the shared data is absent

  out = workdir / "synthetic.txt"
  if not out.exists():
    out.write_text("\n".join(SyntheticCorpus(seed=0).lines(60000)) + "\n")
  return str(out)


def _shards(
  family: str, corpus: str, workdir: Path, seq_len: int, vocab: int, max_docs: int, train_chars: int
) -> Path:
  out = workdir / f"{family}-{seq_len}-{vocab}-{max_docs}"
  if not (out / MANIFEST).exists():
    prepare_shards(
      corpus,
      out,
      family,
      vocab_size=vocab,
      seq_len=seq_len,
      max_docs=max_docs,
      tokenizer_train_chars=train_chars,
      log=lambda s: print(s, file=sys.stderr, flush=True),
    )
  return out


def _time_iterator(it, tokens_per_batch: int, seconds: float, min_batches: int = 5) -> dict:
  for _ in range(2):
    next(it)
  n, t0 = 0, time.perf_counter()
  while n < min_batches or time.perf_counter() - t0 < seconds:
    next(it)
    n += 1
  dt = time.perf_counter() - t0
  return dict(
    batches=n,
    seconds=round(dt, 3),
    batches_per_s=round(n / dt, 2),
    tokens_per_s=round(n * tokens_per_batch / dt),
  )


def bench_pipeline(
  shards: Path,
  family: str,
  seq_len: int,
  vocab: int,
  batch: int,
  seconds: float,
  prefetch: int = 0,
  workers: int = 1,
) -> dict:
  cfg = dict(source="shards", path=str(shards), seq_len=seq_len, validation_fraction=0.0)
  ds = build_dataset(cfg, family, vocab, None)
  it = ds.train_iterator(batch, seed=0, prefetch=prefetch, workers=workers)
  if family == "bert":
    out = _time_iterator(it, batch * seq_len, seconds)
    out.update(batch_size=batch, seq_len=seq_len, max_predictions=ds.meta["max_predictions"])
  else:
    out = _time_iterator(it, batch * seq_len, seconds)
    raw, tgt = ds.meta["chunk_len"], ds.meta["targets_length"]
    scale = out["tokens_per_s"] / (batch * seq_len)
    out.update(
      batch_size=batch,
      inputs_length=seq_len,
      targets_length=tgt,
      raw_length=raw,
      raw_tokens_per_s=round(scale * batch * raw),
      trainer_tokens_per_s=round(scale * batch * (seq_len + tgt)),
    )
  out.update(
    dtype=ds.meta["dtype"],
    num_chunks=ds.meta["num_chunks"],
    vocab_size=ds.tokenizer.vocab_size,
    prefetch=prefetch,
    workers=workers,
  )
  if prefetch:
    it.close()
  return out


def bench_train_step(
  batch_size: int, seq_len: int, seconds: float, sample_batch: dict, size: str = "tiny"
) -> dict:
  import jax

  from configs import get_config
  from ntng_jax import partitioning
  from ntng_jax.optim import build_optimizer
  from ntng_jax.train import programs

  c = get_config("bert", f"size={size}")
  c.data.seq_len = seq_len
  vocab = c.model.vocab_size  # fold the shards' ids into this model's vocabulary
  sample_batch = {
    k: (v % vocab if k in ("input_ids", "mlm_labels") else v) for k, v in sample_batch.items()
  }
  c.train.batch_size = c.train.micro_batch_size = batch_size
  mesh = partitioning.make_mesh(c.mesh)
  tx = build_optimizer(c.optim)
  built = programs.build_at_depth(c, c.model.num_layers, tx, mesh, sample_batch)
  state = programs.init_state(built, tx, mesh, sample_batch, 0)
  controls = {"learning_rate": np.float32(1e-3)}
  batch = partitioning.global_batch(mesh, sample_batch)
  rng = jax.random.PRNGKey(0)

  def step(state):
    with partitioning.activate(mesh):
      state, metrics = built.train_step(state, batch, rng, controls)
    return state, metrics

  for _ in range(3):  # compile + warm up
    state, m = step(state)
    jax.block_until_ready(m)
  n, t0 = 0, time.perf_counter()
  while n < 3 or time.perf_counter() - t0 < seconds:
    state, m = step(state)
    jax.block_until_ready(m)  # one step at a time, so --seconds bounds the run
    n += 1
  dt = time.perf_counter() - t0
  return dict(
    steps=n,
    seconds=round(dt, 3),
    step_ms=round(1000 * dt / n, 2),
    tokens_per_s=round(n * batch_size * seq_len / dt),
    batch_size=batch_size,
    seq_len=seq_len,
    model=f"bert {size} (configs/bert.py size={size})",
    device=str(jax.devices()[0].platform),
    num_devices=jax.device_count(),
  )


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--corpus", default=str(DEFAULT_CORPUS))
  ap.add_argument(
    "--workdir", default=os.path.join(tempfile.gettempdir(), "ntng_input_pipeline_bench")
  )
  ap.add_argument("--max_docs", type=int, default=30000)
  ap.add_argument("--tokenizer_train_chars", type=int, default=3_000_000)
  ap.add_argument("--bert_vocab", type=int, default=32768)
  ap.add_argument("--t5_vocab", type=int, default=32100)
  ap.add_argument("--bert_batch", type=int, default=128)
  ap.add_argument("--t5_batch", type=int, default=72)
  ap.add_argument("--seconds", type=float, default=3.0)
  ap.add_argument(
    "--sizes",
    default="tiny",
    help="comma-separated BERT sizes whose train "
    "step is timed (tiny, small, base); one ratio per size",
  )
  ap.add_argument(
    "--workers",
    type=int,
    default=2,
    help="also time Prefetcher with this many threads (0 = skip); more "
    "threads than 2 fight over the GIL and get slower",
  )
  ap.add_argument("--skip_train_step", action="store_true")
  args = ap.parse_args(argv)
  work = Path(args.workdir)
  work.mkdir(parents=True, exist_ok=True)
  corpus = _corpus(args.corpus, work)
  bert_dir = _shards(
    "bert", corpus, work, 128, args.bert_vocab, args.max_docs, args.tokenizer_train_chars
  )
  t5_dir = _shards(
    "t5", corpus, work, 512, args.t5_vocab, args.max_docs, args.tokenizer_train_chars
  )
  result = dict(
    machine=dict(
      python=platform.python_version(),
      cpus=os.cpu_count(),
      processor=platform.processor() or platform.machine(),
    ),
    corpus=corpus,
  )
  result["bert_mlm_128"] = bench_pipeline(
    bert_dir, "bert", 128, args.bert_vocab, args.bert_batch, args.seconds
  )
  result["t5_span_512_114"] = bench_pipeline(
    t5_dir, "t5", 512, args.t5_vocab, args.t5_batch, args.seconds
  )
  if args.workers > 0:  # the same batches, computed ahead by a thread pool (Prefetcher)
    result["bert_mlm_128_prefetch"] = bench_pipeline(
      bert_dir,
      "bert",
      128,
      args.bert_vocab,
      args.bert_batch,
      args.seconds,
      prefetch=2 * args.workers,
      workers=args.workers,
    )
    result["t5_span_512_114_prefetch"] = bench_pipeline(
      t5_dir,
      "t5",
      512,
      args.t5_vocab,
      args.t5_batch,
      args.seconds,
      prefetch=2 * args.workers,
      workers=args.workers,
    )
  if not args.skip_train_step:
    # A real batch from the shards (ids folded into each model's vocabulary).
    ds = build_dataset(
      dict(source="shards", path=str(bert_dir), seq_len=128, validation_fraction=0.0),
      "bert",
      args.bert_vocab,
      None,
    )
    sample = next(ds.train_iterator(args.bert_batch, seed=0))
    sizes = [s for s in args.sizes.split(",") if s]
    for size in sizes:
      key = "tiny_bert_train_step" if size == "tiny" else f"{size}_bert_train_step"
      result[key] = bench_train_step(args.bert_batch, 128, args.seconds, sample, size)
      result[f"ratio_bert_pipeline_to_{size}_step"] = round(
        result["bert_mlm_128"]["tokens_per_s"] / result[key]["tokens_per_s"], 1
      )
  result["meets_300k_tokens_per_s"] = bool(
    result["bert_mlm_128"]["tokens_per_s"] >= 300_000
    and result["t5_span_512_114"]["tokens_per_s"] >= 300_000
  )
  print(json.dumps(result, indent=1))
  return result


if __name__ == "__main__":
  main()
