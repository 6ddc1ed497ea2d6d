"""Built-in synthetic corpus (``data.source='synthetic'``): a seeded, stationary first-order
Markov chain over ``num_words`` made-up words, Zipf-weighted successors, one line per
independent stretch of the chain. ``lines(n, start)`` is deterministic random access (block
``b`` of ``_BLOCK`` lines uses ``default_rng((seed, 1, b))``); ``entropy_rate_bits_per_word``
is what a model that learns context can reach. Construction details: docs/data.md.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

_BLOCK = 1024  # lines generated together (one RNG per block)
_ONSETS = (
  "b",
  "c",
  "d",
  "f",
  "g",
  "h",
  "j",
  "k",
  "l",
  "m",
  "n",
  "p",
  "r",
  "s",
  "t",
  "v",
  "w",
  "z",
  "br",
  "ch",
  "dr",
  "gl",
  "kr",
  "pl",
  "sh",
  "st",
  "th",
  "tr",
)
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ou")
_CODAS = ("", "", "", "", "n", "r", "s", "l", "m", "k", "nd", "st")


def _entropy_bits(p: np.ndarray, axis: int = -1) -> np.ndarray:
  with np.errstate(divide="ignore", invalid="ignore"):
    terms = np.where(p > 0, -p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
  return terms.sum(axis=axis)


class SyntheticCorpus:
  """Seeded sparse Markov-chain text generator (see the module docstring).

  Args:
    seed: everything (words, chain, lines) is a pure function of this seed.
    num_words: vocabulary size in words.
    branching: successors per word (plus one cycle edge, which may coincide with one).
    zipf_exponent: exponent of the word-rank weights used to pick successors and of the
      transition probabilities over a word's successors.
    min_words, max_words: inclusive range of words per line.

  Attributes: ``words`` (np.ndarray of str, [num_words], index = rank), ``successors``
  (int64 [num_words, K]), ``probs`` (float64 [num_words, K], rows sum to 1), ``stationary``
  (float64 [num_words]).
  """

  def __init__(
    self,
    seed: int = 0,
    num_words: int = 1500,
    branching: int = 6,
    zipf_exponent: float = 1.0,
    min_words: int = 8,
    max_words: int = 40,
  ):
    if num_words < 2 or branching < 1 or branching >= num_words:
      raise ValueError(
        f"need 2 <= num_words and 1 <= branching < num_words, got "
        f"num_words={num_words}, branching={branching}."
      )
    if not 1 <= min_words <= max_words:
      raise ValueError(f"need 1 <= min_words <= max_words, got {min_words}, {max_words}.")
    self.seed, self.num_words, self.branching = int(seed), int(num_words), int(branching)
    self.zipf_exponent = float(zipf_exponent)
    self.min_words, self.max_words = int(min_words), int(max_words)
    rng = np.random.default_rng((self.seed, 0))
    self.words = self._make_words(rng)
    self.successors, self.probs = self._make_chain(rng)
    self._cum = np.cumsum(self.probs, axis=1)
    self._cum[:, -1] = 1.0
    self.stationary = self._stationary()
    self._stat_cum = np.cumsum(self.stationary)
    self._stat_cum[-1] = 1.0

  # ------------------------------------------------------------------ construction
  def _make_words(self, rng: np.random.Generator) -> np.ndarray:
    words: dict[str, None] = {}
    while len(words) < self.num_words:
      n = 2 * (self.num_words - len(words)) + 16
      nsyl = rng.choice([1, 2, 3, 4], size=n, p=[0.2, 0.45, 0.3, 0.05])
      on = rng.integers(len(_ONSETS), size=(n, 4))
      vo = rng.integers(len(_VOWELS), size=(n, 4))
      co = rng.integers(len(_CODAS), size=(n, 4))
      for i in range(n):
        w = "".join(
          _ONSETS[on[i, j]] + _VOWELS[vo[i, j]] + _CODAS[co[i, j]] for j in range(nsyl[i])
        )
        words.setdefault(w, None)
    chosen = list(words)[: self.num_words]
    chosen.sort(key=len)  # frequent (low) ranks get short words; stable keeps seeded order
    return np.array(chosen)

  def _make_chain(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    v, k, a = self.num_words, self.branching, self.zipf_exponent
    rank_w = np.arange(1, v + 1, dtype=np.float64) ** -a
    # Weighted sampling without replacement (Gumbel top-k) of k successors per word.
    keys = np.log(rank_w)[None, :] - np.log(-np.log(rng.random((v, v))))
    part = np.argpartition(-keys, k - 1, axis=1)[:, :k]
    succ = np.take_along_axis(part, np.argsort(-np.take_along_axis(keys, part, 1), axis=1), 1)
    # Irreducibility: append one edge along a random cycle through all words.
    order = rng.permutation(v)
    nxt = np.empty(v, dtype=np.int64)
    nxt[order] = np.roll(order, -1)
    succ = np.concatenate([succ, nxt[:, None]], axis=1)
    p = np.arange(1, k + 2, dtype=np.float64) ** -a
    probs = np.broadcast_to(p / p.sum(), succ.shape).copy()
    # Merge a duplicated cycle edge into its earlier occurrence.
    dup = (succ[:, :k] == nxt[:, None]).any(axis=1)
    probs[dup, :k] += np.where(succ[dup, :k] == nxt[dup, None], probs[dup, k : k + 1], 0.0)
    probs[dup, k] = 0.0
    return succ.astype(np.int64), probs

  def _stationary(self) -> np.ndarray:
    v = self.num_words
    pi = np.full(v, 1.0 / v)
    rows = np.repeat(np.arange(v), self.successors.shape[1])
    cols, vals = self.successors.ravel(), self.probs.ravel()
    for _ in range(10000):  # lazy power iteration (aperiodicity not required)
      new = 0.5 * pi + 0.5 * np.bincount(cols, weights=pi[rows] * vals, minlength=v)
      if np.abs(new - pi).sum() < 1e-13:
        pi = new
        break
      pi = new
    return pi / pi.sum()

  # ------------------------------------------------------------------ statistics
  def entropy_rate_bits_per_word(self) -> float:
    """Entropy rate of the chain, ``sum_i pi_i H(P[i,:])`` in bits/word (within a line)."""
    return float(np.dot(self.stationary, _entropy_bits(self.probs, axis=1)))

  def unigram_entropy_bits_per_word(self) -> float:
    """Entropy of the stationary word distribution ``H(pi)`` in bits/word."""
    return float(_entropy_bits(self.stationary))

  # ------------------------------------------------------------------ generation
  def _block_ids(self, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Word ids int64 [_BLOCK, max_words] and lengths int64 [_BLOCK] of block ``b``."""
    rng = np.random.default_rng((self.seed, 1, b))
    lengths = rng.integers(self.min_words, self.max_words + 1, size=_BLOCK)
    u = rng.random((_BLOCK, self.max_words))
    ids = np.empty((_BLOCK, self.max_words), dtype=np.int64)
    ids[:, 0] = np.searchsorted(self._stat_cum, u[:, 0], side="right")
    for t in range(1, self.max_words):
      prev = ids[:, t - 1]
      choice = (u[:, t, None] >= self._cum[prev]).sum(axis=1)
      ids[:, t] = self.successors[prev, np.minimum(choice, self._cum.shape[1] - 1)]
    return ids, lengths

  def line_ids(self, num_lines: int, start: int = 0) -> list[np.ndarray]:
    """Word-id arrays (int64, one per line) for lines ``start .. start+num_lines-1``."""
    out: list[np.ndarray] = []
    end = start + num_lines
    for b in range(start // _BLOCK, (end + _BLOCK - 1) // _BLOCK):
      ids, lengths = self._block_ids(b)
      lo, hi = max(start - b * _BLOCK, 0), min(end - b * _BLOCK, _BLOCK)
      out.extend(ids[i, : lengths[i]] for i in range(lo, hi))
    return out

  def lines(self, num_lines: int, start: int = 0) -> Iterator[str]:
    """Yield lines ``start .. start+num_lines-1`` as space-separated words (deterministic)."""
    words = self.words.tolist()
    end = start + num_lines
    for b in range(start // _BLOCK, (end + _BLOCK - 1) // _BLOCK):
      ids, lengths = self._block_ids(b)
      lo, hi = max(start - b * _BLOCK, 0), min(end - b * _BLOCK, _BLOCK)
      rows = ids.tolist()
      for i in range(lo, hi):
        yield " ".join([words[w] for w in rows[i][: lengths[i]]])
