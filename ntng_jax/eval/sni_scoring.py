"""Rouge-L of SNI predictions, computed both ways (docs/paper.md §5, docs/deviations.md).

* ``rouge_l_official``: the SNI benchmark's metric (``compute_metrics`` in
  allenai/natural-instructions ``eval/automatic/evaluation.py``). Rouge-L F-measure with
  Porter stemming (rouge-score) of the prediction against *every* reference of the instance;
  the best one counts; mean over the test instances x100.
* ``rouge_l_paper``: what the paper's fine-tuning code computed (nanoT5's ``predict`` in
  ``t5/utils/train.py``, fed by ``DataCollatorForNI`` in ``t5/utils/copied.py``). *One*
  reference per instance, drawn at random from its outputs (here: a seeded draw), tokenised,
  cut to ``max_target_len`` tokens (EOS included) and decoded back to text with special tokens
  dropped; the same Rouge-L F with stemming (HF ``evaluate``'s rouge wraps rouge-score) per
  instance; mean over the test instances x100. **The paper's SNI numbers are this one.**

Both score the same predictions (greedy decodes, cut at EOS, special tokens dropped). They
agree when every instance has a single reference that fits ``max_target_len`` tokens, and
differ when an instance has several references (best vs a random one) or a longer one.
``rouge_l`` (the headline that reports read) is ``rouge_l_paper``.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

from ntng_jax.eval.metrics import rouge_l
from ntng_jax.eval.sni import draw_targets

__all__ = ["decode_text", "paper_references", "score_sni"]


def decode_text(tokenizer, ids: Iterable[int]) -> str:
  """Text of token ``ids`` as HF's ``batch_decode(skip_special_tokens=True)`` + ``strip()``:
  cut at the first EOS, padding / control / unknown / sentinel ids dropped."""
  ids = [int(i) for i in ids]
  eos = getattr(tokenizer, "eos_id", None)
  if eos is not None and eos in ids:
    ids = ids[: ids.index(eos)]
  drop = set(getattr(tokenizer, "special_ids", ())) | {tokenizer.pad_id}
  return tokenizer.decode([i for i in ids if i not in drop]).strip()


def paper_references(
  examples: Sequence[Mapping], tokenizer, max_target_len: int, seed: int = 0
) -> list[str]:
  """The one reference per example that the paper's code scored against: a seeded random
  choice among ``references``, round-tripped through the tokenizer with the label cap
  (``max_target_len - 1`` tokens + EOS, as the collator truncates)."""
  refs = draw_targets(examples, np.random.default_rng(seed))
  return [decode_text(tokenizer, tokenizer.encode(r)[: max_target_len - 1]) for r in refs]


def score_sni(
  predictions: Sequence[str],
  examples: Sequence[Mapping],
  tokenizer,
  max_target_len: int,
  seed: int = 0,
) -> dict:
  """Both Rouge-L figures, overall and per task.

  Returns ``{'rouge_l': = rouge_l_paper, 'rouge_l_paper', 'rouge_l_official',
  'tasks': {task: {'rouge_l', 'rouge_l_paper', 'rouge_l_official', 'num_examples'}},
  'paper_references': [str]}`` (scores x100).
  """
  if len(predictions) != len(examples):
    raise ValueError(f"{len(predictions)} predictions for {len(examples)} SNI examples.")
  paper_refs = paper_references(examples, tokenizer, max_target_len, seed)
  all_refs = [list(ex["references"]) for ex in examples]

  def both(idx):
    preds = [predictions[i] for i in idx]
    paper = rouge_l(preds, [paper_refs[i] for i in idx])
    official = rouge_l(preds, [all_refs[i] for i in idx])
    return dict(rouge_l=paper, rouge_l_paper=paper, rouge_l_official=official)

  by_task: dict[str, list[int]] = {}
  for i, ex in enumerate(examples):
    by_task.setdefault(ex["task"], []).append(i)
  tasks = {t: dict(both(idx), num_examples=len(idx)) for t, idx in by_task.items()}
  return dict(both(range(len(examples))), tasks=tasks, paper_references=paper_refs)
