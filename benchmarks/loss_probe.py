"""Where a BERT run's validation loss comes from: masked tokens that can be copied from the
sequence against those that cannot, as JSON.

  python -m benchmarks.loss_probe --run=<pretrain workdir>[@step] [--run=...]
      [--validation=name=path ...] [--output=F]

A masked position is *copyable* when its original id also appears, unmasked, elsewhere in the
same input sequence (a name or word repeated within 128 tokens). For every run (its newest
intact checkpoint, or `@step`) and every validation set of the run's config, on the fixed
batches the trainer scores (`train.validation_batches`): the share of copyable positions and the
mean cross-entropy (nats) and accuracy on each kind, next to the cross-entropy of the
context-free predictor on the same positions (`unigram_loss`: the training chunks' token
frequencies, add-one smoothed). `--validation` adds text files as further
sets, masked as the trainer masks its own (e.g. whole articles no training chunk comes from). Run from the directory the runs were
launched in (their data paths are relative to it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np

from launch import common
from ntng_jax import data as data_lib
from ntng_jax.errors import UserError
from ntng_jax.eval.pretrained import load_pretrained
from ntng_jax.models import losses
from ntng_jax.train import programs


def copyable(batch: dict) -> np.ndarray:
  """bool [B, P]: the label of a masked position also sits at an unmasked position of its row."""
  ids, pos, labels = batch["input_ids"], batch["mlm_positions"], batch["mlm_labels"]
  masked = np.zeros(ids.shape, bool)
  r, c = np.nonzero(batch["mlm_weights"] > 0)  # padding slots also point at position 0
  masked[r, pos[r, c]] = True
  visible = np.where(masked, -1, ids)  # [B, S]
  return (labels[:, :, None] == visible[:, None, :]).any(-1)


def load(run: str):
  """(config, step, depth, model, params) of `workdir[@step]`: the checkpoint at `step`, or the
  newest usable one, read by the loader fine-tuning uses."""
  workdir, at, step = run.partition("@")
  if at and not step.isdigit():
    raise UserError(
      f"--run={run}: after '@' comes a checkpoint step (an integer); drop '@...' for the newest."
    )
  pre = load_pretrained(workdir, step=int(step) if at else None)
  depth = pre.model_cfg.num_layers
  return pre.config, pre.step, depth, programs.model_at_depth(pre.config, depth), pre.params


def probe(run: str, extra_sets: dict[str, str]) -> dict:
  config, step, depth, model, params = load(run)
  workdir = run.partition("@")[0]
  work = Path(workdir)
  config.data.validation.update(extra_sets)
  dataset = data_lib.build_dataset(config.data, "bert", config.model.vocab_size, work)
  counts = np.bincount(np.asarray(dataset.train_chunks).ravel(), minlength=config.model.vocab_size)
  counts[sorted(dataset.tokenizer.special_ids)] = 0
  unigram_nll = -np.log((counts + 1.0) / (counts + 1.0).sum())
  sets = dataset.validation_sets(
    config.train.micro_batch_size, seed=0, max_batches=config.train.validation_batches
  )

  @jax.jit
  def token_stats(params, batch):
    logits, labels, _ = model.logits(params, batch)
    return losses.token_losses(logits, labels), logits.argmax(-1) == labels

  out = {"run": workdir, "step": step, "depth": depth, "sets": {}}
  for name, batches in sets.items():
    sums = {k: np.zeros(4) for k in ("copyable", "other")}  # tokens, loss, correct, unigram
    for batch in batches:
      batch = {k: np.asarray(v) for k, v in batch.items() if k != "example_id"}
      loss, correct = jax.device_get(token_stats(params, batch))
      weight, copy = batch["mlm_weights"] > 0, copyable(batch)
      for kind, sel in (("copyable", weight & copy), ("other", weight & ~copy)):
        uni = unigram_nll[batch["mlm_labels"][sel]].sum()
        sums[kind] += (sel.sum(), loss[sel].sum(), correct[sel].sum(), uni)
    total = sum(s[0] for s in sums.values())
    out["sets"][name] = {
      kind: {
        "share": s[0] / total,
        "loss": s[1] / s[0],
        "accuracy": s[2] / s[0],
        "unigram_loss": s[3] / s[0],
        "tokens": int(s[0]),
      }
      for kind, s in sums.items()
    }
    out["sets"][name]["all_loss"] = sum(s[1] for s in sums.values()) / total
    out["sets"][name]["all_unigram_loss"] = sum(s[3] for s in sums.values()) / total
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run", action="append", required=True, help="workdir[@step]")
  parser.add_argument("--validation", action="append", default=[], help="name=text file")
  parser.add_argument("--output", default=None, help="JSON file (default: stdout only)")
  args = parser.parse_args()
  extra = dict(v.split("=", 1) for v in args.validation)
  results = common.run_cleanly(lambda: [probe(run, extra) for run in args.run])
  text = json.dumps(results, indent=1)
  print(text)
  if args.output:
    Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
  main()
