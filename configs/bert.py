"""Crammed BERT (MLM) pre-training, docs/paper.md §3.1.

Usage: `--config=configs/bert.py:size=tiny,method=baseline,seed=0`; every field can be overridden
with `--config.train.budget_hours=0.01` and the like.
"""

from configs.common import base_config, finalize

PER_SIZE = {  # over configs/common.py SIZE_DEFAULTS
  # tiny: lr raised from the paper's 1e-3 so that a tiny model learns within its minute.
  "tiny": dict(learning_rate=3e-3, lr_lion=3e-4, lr_sophia=3e-3),
  "small": dict(
    seq_len=128,
    batch_size=128,
    micro_batch_size=64,
    learning_rate=2e-3,
    lr_lion=2e-4,
    lr_sophia=2e-3,
  ),
  # base: the paper's recipe (1536 sequences = 12 x 128 per step, 24 RST hours), in mixed
  # precision as the paper (AMP fp16 there; bf16 here, which its optimizer comparison used too).
  "base": dict(
    seq_len=128, batch_size=1536, micro_batch_size=128, compute_dtype="bfloat16", learning_rate=1e-3
  ),
}


def get_config(arg=None):
  c = base_config("bert", arg, PER_SIZE)
  s = PER_SIZE[c.model.size]
  c.optim = dict(
    name="adamw",
    learning_rate=s["learning_rate"],
    b1=0.9,
    b2=0.98,
    eps=1e-12,
    weight_decay=0.01,
    clip_norm=0.5,
    schedule="triangle",  # peak at 50 % of the RST budget, zero at its end (docs/paper.md §2)
  )
  return finalize(c, PER_SIZE)
