"""Tokenise examples into fixed-shape numpy arrays, and batch them.

The tokenizer is any object with ``encode(text) -> list[int]`` (no special tokens added) and
the ids ``pad_id``, ``cls_id``, ``sep_id`` (BERT) / ``eos_id`` (T5).

BERT layout (every task, single sentences included, fixing docs/paper.md §7.11)::

    1 text:   <cls> A <sep>
    2 texts:  <cls> A <sep> B <sep>
    k texts:  <cls> T1 <sep> T2 <sep> ... Tk <sep>     (COPA, MultiRC, WiC, WSC: no field dropped)

Texts are truncated longest-first (one token at a time from the currently longest text; on
a tie the later text loses it, as HF's ``longest_first``) until the sequence fits
``max_length`` (128). ``attention_mask`` is 1 on real tokens and 0 exactly on padding
(docs/paper.md §7.10: the original ignored it).
"""

from __future__ import annotations

from typing import Iterator, Mapping, Protocol, Sequence

import numpy as np

from ntng_jax.errors import ConfigError

__all__ = [
  "Tokenizer",
  "truncate_longest_first",
  "encode_classification",
  "encode_seq2seq",
  "encode_targets",
  "target_width",
  "shift_right",
  "iterate_batches",
]


class Tokenizer(Protocol):
  pad_id: int
  cls_id: int
  sep_id: int
  eos_id: int

  def encode(self, text: str) -> list[int]: ...


def truncate_longest_first(seqs: Sequence[Sequence[int]], budget: int) -> list[list[int]]:
  """Cut tokens from the end of the longest sequence (ties: the later one) until the total
  length is at most ``budget``."""
  lengths = [len(s) for s in seqs]
  excess = sum(lengths) - budget
  while excess > 0:
    longest = max(lengths)
    i = len(lengths) - 1 - lengths[::-1].index(longest)
    lengths[i] -= 1
    excess -= 1
  return [list(s[:n]) for s, n in zip(seqs, lengths)]


def encode_classification(
  examples: Sequence[Mapping],
  tokenizer: Tokenizer,
  max_length: int = 128,
  num_classes: int | None = None,
) -> dict[str, np.ndarray]:
  """Encode ``[{'texts': (str, ...), 'label': ...}, ...]`` for a BERT classifier.

  Returns (N = number of examples, S = ``max_length``):
    ``input_ids [N, S] int32`` (padded with ``pad_id``), ``attention_mask [N, S] int32``,
    ``labels [N]`` (int32; float32 when ``num_classes == 1``, or when ``num_classes`` is
    None and a label is a float), ``example_id [N] int32`` (position in ``examples``).
  """
  n = len(examples)
  input_ids = np.full((n, max_length), tokenizer.pad_id, dtype=np.int32)
  attention_mask = np.zeros((n, max_length), dtype=np.int32)
  for row, ex in enumerate(examples):
    texts = ex["texts"]
    budget = max_length - (len(texts) + 1)
    if budget < 0:
      raise ConfigError(
        f"max_length {max_length} is too short for {len(texts)} texts; pass a larger --max_length."
      )
    pieces = truncate_longest_first([tokenizer.encode(t) for t in texts], budget)
    ids = [tokenizer.cls_id]
    for p in pieces:
      ids += p + [tokenizer.sep_id]
    input_ids[row, : len(ids)] = ids
    attention_mask[row, : len(ids)] = 1
  labels = [ex["label"] for ex in examples]
  regression = num_classes == 1 or (
    num_classes is None and any(isinstance(y, (float, np.floating)) for y in labels)
  )
  return {
    "input_ids": input_ids,
    "attention_mask": attention_mask,
    "labels": np.asarray(labels, dtype=np.float32 if regression else np.int32).reshape(n),
    "example_id": np.arange(n, dtype=np.int32),
  }


def shift_right(targets: np.ndarray, start_id: int = 0) -> np.ndarray:
  """Decoder inputs ``[N, T]``: ``start_id`` followed by ``targets[:, :-1]``."""
  out = np.empty_like(targets)
  out[:, 0] = start_id
  out[:, 1:] = targets[:, :-1]
  return out


def _pad_rows(rows: list[list[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  ids = np.full((len(rows), length), pad_id, dtype=np.int32)
  mask = np.zeros((len(rows), length), dtype=np.int32)
  for i, r in enumerate(rows):
    ids[i, : len(r)] = r
    mask[i, : len(r)] = 1
  return ids, mask


def _width(rows, cap: int, pad_to_max: bool, pad_multiple: int) -> int:
  if pad_to_max:
    return cap
  longest = max((len(r) for r in rows), default=1)
  return min(cap, -(-longest // pad_multiple) * pad_multiple)


def _target_rows(texts: Sequence[str], tokenizer: Tokenizer, max_target_length: int):
  return [tokenizer.encode(t)[: max_target_length - 1] + [tokenizer.eos_id] for t in texts]


def target_width(
  texts: Sequence[str], tokenizer: Tokenizer, max_target_length: int = 128, pad_multiple: int = 8
) -> int:
  """The target width :func:`encode_seq2seq` (``pad_to_max=False``) would give ``texts``."""
  return _width(
    _target_rows(texts, tokenizer, max_target_length), max_target_length, False, pad_multiple
  )


def encode_targets(
  texts: Sequence[str],
  tokenizer: Tokenizer,
  max_target_length: int = 128,
  width: int | None = None,
  pad_multiple: int = 8,
  decoder_start_id: int = 0,
) -> dict[str, np.ndarray]:
  """The target-side arrays of :func:`encode_seq2seq` for ``texts``: ``targets``,
  ``decoder_input_ids``, ``target_weights``, padded to ``width`` (default: the longest row
  rounded up to ``pad_multiple``, at most ``max_target_length``)."""
  rows = _target_rows(texts, tokenizer, max_target_length)
  if width is None:
    width = _width(rows, max_target_length, False, pad_multiple)
  if any(len(r) > width for r in rows):
    raise ValueError(f"a target is longer than the requested width {width}.")
  targets, tmask = _pad_rows(rows, width, tokenizer.pad_id)
  return {
    "targets": targets,
    "decoder_input_ids": shift_right(targets, decoder_start_id),
    "target_weights": tmask.astype(np.float32),
  }


def encode_seq2seq(
  examples: Sequence[Mapping],
  tokenizer: Tokenizer,
  max_source_length: int = 1024,
  max_target_length: int = 128,
  pad_to_max: bool = True,
  pad_multiple: int = 8,
  decoder_start_id: int = 0,
) -> dict[str, np.ndarray]:
  """Encode ``[{'source': str, 'target': str}, ...]`` (SNI examples) for T5.

  Source and target are truncated to ``max_len - 1`` tokens and get ``eos_id`` appended.
  With ``pad_to_max`` the widths are exactly the maxima; otherwise each is the longest row
  rounded up to ``pad_multiple`` (never above the maximum). Returns:
    ``encoder_input_ids [N, Si] int32``, ``encoder_mask [N, Si] int32``,
    ``targets [N, St] int32``, ``decoder_input_ids [N, St] int32`` (targets shifted right,
    starting with ``decoder_start_id`` = 0), ``target_weights [N, St] float32``
    (1 on target tokens incl. EOS, 0 on padding), ``example_id [N] int32``.
  """
  eos, pad = tokenizer.eos_id, tokenizer.pad_id
  src = [tokenizer.encode(ex["source"])[: max_source_length - 1] + [eos] for ex in examples]
  texts = [ex["target"] for ex in examples]
  enc_ids, enc_mask = _pad_rows(src, _width(src, max_source_length, pad_to_max, pad_multiple), pad)
  width = max_target_length if pad_to_max else None
  return {
    "encoder_input_ids": enc_ids,
    "encoder_mask": enc_mask,
    **encode_targets(texts, tokenizer, max_target_length, width, pad_multiple, decoder_start_id),
    "example_id": np.arange(len(examples), dtype=np.int32),
  }


def iterate_batches(
  arrays: Mapping[str, np.ndarray],
  batch_size: int,
  rng: np.random.Generator | int | None = None,
  drop_last: bool = False,
  pad_last: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
  """Yield dicts of ``[batch_size, ...]`` slices of equally long ``arrays``.

  ``rng`` (a Generator or an int seed) shuffles the order; None keeps it. ``drop_last``
  drops a final partial batch (training). ``pad_last`` instead pads it with zeros to
  ``batch_size`` (fixed shapes for jit in evaluation) and adds ``example_mask [B] float32``
  (1 = real example) to every batch.
  """
  sizes = {len(v) for v in arrays.values()}
  if len(sizes) != 1:
    raise ValueError(f"arrays differ in length: { {k: len(v) for k, v in arrays.items()} }.")
  n = sizes.pop()
  order = np.arange(n)
  if rng is not None:
    order = (
      rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    ).permutation(n)
  for start in range(0, n, batch_size):
    idx = order[start : start + batch_size]
    if len(idx) < batch_size and drop_last:
      return
    batch = {k: np.asarray(v)[idx] for k, v in arrays.items()}
    if pad_last:
      real = len(idx)
      batch = {
        k: np.concatenate([v, np.zeros((batch_size - real,) + v.shape[1:], v.dtype)])
        for k, v in batch.items()
      }
      batch["example_mask"] = (np.arange(batch_size) < real).astype(np.float32)
    yield batch
