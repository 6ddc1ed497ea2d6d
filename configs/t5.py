"""T5 v1.1 (span corruption) pre-training, docs/paper.md §3.2.

Usage: `--config=configs/t5.py:size=tiny,method=baseline,seed=0`.
"""

from configs.common import base_config, finalize

PER_SIZE = {  # over configs/common.py SIZE_DEFAULTS
  "tiny": dict(budget_hours=0.015, learning_rate=2e-2),
  "small": dict(seq_len=256, batch_size=64, micro_batch_size=32, learning_rate=2e-2),
  # base: the paper's recipe (144 = 2 x 72 sequences of 512 input / 114 target tokens).
  "base": dict(seq_len=512, batch_size=144, micro_batch_size=72, learning_rate=2e-2),
}


def get_config(arg=None):
  c = base_config("t5", arg, PER_SIZE)
  s = PER_SIZE[c.model.size]
  c.optim = dict(
    name="adamw_scale",
    learning_rate=s["learning_rate"],
    b1=0.9,
    b2=0.999,
    eps=1e-6,
    weight_decay=0.0,
    clip_norm=1.0,
    schedule="t5_cosine",  # warmup from half the peak over 15.3 %, cosine to 1e-5 (docs/paper.md §2)
  )
  return finalize(c, PER_SIZE)
