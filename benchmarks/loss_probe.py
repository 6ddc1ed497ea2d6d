"""Where a BERT or T5 run's validation loss comes from: target tokens that can be copied from the
model's input against those that cannot, as JSON.

  python -m benchmarks.loss_probe --run=<pretrain workdir>[@step] [--run=...]
      [--validation=name=path ...] [--output=F]

A target token is *copyable* when its id also appears, visible, in the same example's input: for
BERT at an unmasked position of the sequence, for T5 in the encoder's input (a name or word
repeated within the chunk). T5's sentinels and EOS are a third kind, *structure*, which has no
context-free counterpart. For every run (its newest intact checkpoint, or `@step`) and every
validation set of the run's config, on the fixed batches the trainer scores
(`train.validation_batches`): the share of each kind and the mean cross-entropy (nats) and
accuracy on it, next to the cross-entropy of the context-free predictor on the same tokens
(`unigram_loss`: the training chunks' token frequencies, add-one smoothed). Per set, `all_loss`
is the loss on every target token (the trainer's validation loss); BERT adds `all_unigram_loss`,
T5 `content_loss` and `content_unigram_loss` (its tokens other than structure). `--validation`
adds text files as further sets, masked or span-corrupted as the trainer does its own (e.g. whole
articles no training chunk comes from). Run from the directory the runs were launched in (their
data paths are relative to it).
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


def copyable(batch: dict, labels: np.ndarray) -> np.ndarray:
  """bool [B, T]: target `labels` [B, T] whose id sits, visible, in its example's input."""
  if "mlm_positions" in batch:  # BERT: the sequence with its masked positions hidden
    ids, pos = batch["input_ids"], batch["mlm_positions"]
    masked = np.zeros(ids.shape, bool)
    r, c = np.nonzero(batch["mlm_weights"] > 0)  # padding slots also point at position 0
    masked[r, pos[r, c]] = True
    visible = np.where(masked, -1, ids)  # [B, S]
  else:  # T5: the encoder's input, whose noise spans are already sentinels
    visible = batch["encoder_input_ids"]
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
  family = config.model.family
  dataset = data_lib.build_dataset(config.data, family, config.model.vocab_size, work)
  special = np.array(sorted(dataset.tokenizer.special_ids))
  counts = np.bincount(np.asarray(dataset.train_chunks).ravel(), minlength=config.model.vocab_size)
  counts[special] = 0
  unigram_nll = -np.log((counts + 1.0) / (counts + 1.0).sum())
  sets = dataset.validation_sets(
    config.train.micro_batch_size, seed=0, max_batches=config.train.validation_batches
  )

  @jax.jit
  def token_stats(params, batch):
    logits, labels, weights = model.logits(params, batch)
    return losses.token_losses(logits, labels), logits.argmax(-1) == labels, labels, weights

  content_kinds = ("copyable", "other")
  kinds = content_kinds + (("structure",) if family == "t5" else ())
  out = {"run": workdir, "step": step, "depth": depth, "sets": {}}
  for name, batches in sets.items():
    sums = {k: np.zeros(4) for k in kinds}  # tokens, loss, correct, unigram
    for batch in batches:
      batch = {k: np.asarray(v) for k, v in batch.items() if k != "example_id"}
      loss, correct, labels, weights = jax.device_get(token_stats(params, batch))
      weight, copy = weights > 0, copyable(batch, labels)
      content = weight & ~np.isin(labels, special) if family == "t5" else weight
      for kind, sel in (
        ("copyable", content & copy),
        ("other", content & ~copy),
        ("structure", weight & ~content),
      ):
        if kind in sums:
          uni = unigram_nll[labels[sel]].sum()
          sums[kind] += (sel.sum(), loss[sel].sum(), correct[sel].sum(), uni)
    total = sum(s[0] for s in sums.values())
    res = out["sets"][name] = {
      kind: {
        "share": s[0] / total,
        "loss": s[1] / s[0],
        "accuracy": s[2] / s[0],
        **({} if kind == "structure" else {"unigram_loss": s[3] / s[0]}),
        "tokens": int(s[0]),
      }
      for kind, s in sums.items()
    }
    res["all_loss"] = sum(s[1] for s in sums.values()) / total
    n_content = sum(sums[k][0] for k in content_kinds)
    content_unigram = sum(sums[k][3] for k in content_kinds) / n_content
    if family == "t5":
      res["content_loss"] = sum(sums[k][1] for k in content_kinds) / n_content
      res["content_unigram_loss"] = content_unigram
    else:
      res["all_unigram_loss"] = content_unigram
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
