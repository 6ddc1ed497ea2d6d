"""Decoder-only (GPT-2 style) causal-LM pre-training: the family the paper did not test.

Usage: `--config=configs/gpt.py:size=tiny,method=baseline,seed=0`. `base` is GPT-2 small (124M
parameters, 1,024 positions; `data.seq_len` may be lowered). No paper table exists for this
family: `rst.table=auto` calibrates one at start-up (share it across a sweep).
"""

from configs.common import apply_method_defaults, base_config
from ntng_jax import registry

PER_SIZE = {  # over configs/common.py SIZE_DEFAULTS
  "tiny": dict(learning_rate=3e-3),  # synthetic corpus, like BERT/T5 tiny
  "small": dict(seq_len=256, batch_size=64, micro_batch_size=32, learning_rate=1e-3),
  # base: GPT-2 small at its full context (480 x 1,024 tokens per step as GPT-2's ~0.5M), bf16.
  "base": dict(
    seq_len=1024, batch_size=480, micro_batch_size=16, compute_dtype="bfloat16", learning_rate=6e-4
  ),
}


def optim_recipe(name: str, learning_rate: float) -> dict:
  """The optimizer fields for `name` ('adamw' | 'lion' | 'sophia') at AdamW peak `learning_rate`.

  GPT-2 / nanoGPT defaults on the RST clock: AdamW b1 0.9, b2 0.95, weight decay 0.1 except
  biases and norm scales, clip 1.0, the budget one-cycle schedule the paper used for BERT. Lion:
  lr / 3 and weight decay x 3 of AdamW's (the Lion paper's 3-10x rule). Sophia-G: the Sophia
  paper's GPT-2 settings (b1 0.965, b2 0.99, rho 0.04, k = 10, weight decay 0.2)."""
  common = dict(clip_norm=1.0, weight_decay_exclude="bias_and_norm", schedule="triangle")
  if name == "lion":
    return dict(
      name="lion", learning_rate=learning_rate / 3, b1=0.9, b2=0.99, weight_decay=0.3, **common
    )
  if name == "sophia":
    return dict(
      name="sophia",
      learning_rate=learning_rate,
      b1=0.965,
      b2=0.99,
      rho=0.04,
      weight_decay=0.2,
      update_interval=10,
      refresh_at_zero=True,
      gnb_microbatched=True,
      **common,
    )
  return dict(
    name="adamw", learning_rate=learning_rate, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, **common
  )


def get_config(arg=None):
  c = base_config("gpt", arg, PER_SIZE)
  size, name = c.model.size, c.method.name
  c.optim = optim_recipe(
    name if name in registry.OPTIMIZER_METHODS else "adamw", PER_SIZE[size]["learning_rate"]
  )
  return apply_method_defaults(c)
