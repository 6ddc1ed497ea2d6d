"""SentencePiece tokenizers with the id layouts of BERT (MLM), T5 (span corruption) and GPT.

BERT: BPE, lower-cased, specials ``<pad>=0 <s>=1 </s>=2 <unk>=3 <cls>=4 <sep>=5 <mask>=6``.
T5: unigram, ``<pad>=0 </s>=1 <unk>=2``, ``num_sentinels`` sentinels at the top of the vocabulary
(``<extra_id_i>`` = ``vocab_size - 1 - i``). GPT: as T5 without sentinels. ``vocab_size`` is the
number of ids the tokenizer may emit; ``fingerprint`` (16 hex digits) hashes the model and the
layout. Details and the deviation from the paper's WordPiece: docs/data.md.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm

from ntng_jax.data.errors import DataError

BERT_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>", "<cls>", "<sep>", "<mask>")  # ids 0..6
_RECIPE_VERSION = 1  # bump when training options change (invalidates tokenizer caches)
_MAX_LINE_CHARS = 4000  # SentencePiece skips longer "sentences"; we split them
MODEL_FILE, META_FILE = "spm.model", "tokenizer.json"  # a tokenizer directory's files


def default_num_sentinels(vocab_size: int) -> int:
  """T5 sentinel count: 100 for real vocabularies, ``vocab_size // 20`` for tiny ones."""
  return min(100, vocab_size // 20)


class Tokenizer:
  """A SentencePiece model plus the id conventions above.

  Args:
    model_proto: bytes of the SentencePiece ``.model`` file.
    kind: ``'bert'`` or ``'t5'``.
    vocab_size: model-facing vocabulary size (>= real pieces + sentinels).
    num_sentinels: T5 only (0 for BERT).
  """

  def __init__(self, model_proto: bytes, kind: str, vocab_size: int, num_sentinels: int = 0):
    if kind not in ("bert", "t5", "gpt"):
      raise ValueError(f"Tokenizer kind must be 'bert', 't5' or 'gpt', got {kind!r}.")
    self.kind, self.model_proto = kind, bytes(model_proto)
    self.sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
    self.num_pieces = int(self.sp.get_piece_size())
    self.num_sentinels = int(num_sentinels) if kind == "t5" else 0
    self.vocab_size = int(vocab_size)
    self.pad_id, self.unk_id = self.sp.pad_id(), self.sp.unk_id()
    self.eos_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else None
    self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
    # BERT specials missing from the model get ids right after its pieces.
    self.appended_specials: dict[str, int] = {}
    if kind == "bert":
      found = {name: self._find_piece(name) for name in ("pad", "cls", "sep", "mask")}
      if self.pad_id >= 0:
        found["pad"] = self.pad_id
      for name in ("pad", "cls", "sep", "mask"):
        if found[name] is None:
          found[name] = self.num_pieces + len(self.appended_specials)
          self.appended_specials[name] = found[name]
      self.pad_id, self.cls_id = found["pad"], found["cls"]
      self.sep_id, self.mask_id = found["sep"], found["mask"]
    else:
      if self.eos_id is None or self.pad_id < 0:
        raise ValueError(
          "A T5 SentencePiece model needs pad and eos pieces (pad_id and "
          "eos_id >= 0); retrain it with --pad_id=0 --eos_id=1."
        )
      self.cls_id = self.sep_id = self.mask_id = None
    extra = self.num_sentinels + len(self.appended_specials)
    if self.num_pieces + extra > self.vocab_size:
      raise ValueError(
        f"{self.num_pieces} pieces + {extra} sentinel/special ids exceed "
        f"vocab_size={self.vocab_size}."
      )
    layout = json.dumps([kind, self.vocab_size, self.num_sentinels]).encode()
    self.fingerprint = hashlib.sha256(self.model_proto + layout).hexdigest()[:16]
    self._legacy_fingerprint = hashlib.sha256(self.model_proto).hexdigest()[:16]
    self._special_ids = frozenset(
      [i for i in range(self.num_pieces) if self.sp.is_control(i) or self.sp.is_unknown(i)]
      + (self.vocab_size - 1 - np.arange(self.num_sentinels)).tolist()
      + list(self.appended_specials.values())
    )

  def _find_piece(self, name: str) -> int | None:
    """Id of ``<name>`` or ``[NAME]`` if the model has such a piece."""
    for piece in (f"<{name}>", f"[{name.upper()}]"):
      i = self.sp.piece_to_id(piece)
      if i != self.sp.unk_id() or piece == self.sp.id_to_piece(self.sp.unk_id()):
        return int(i)
    return None

  @classmethod
  def from_sentencepiece(
    cls, model: str | os.PathLike | bytes, kind: str, num_sentinels: int | None = None
  ) -> "Tokenizer":
    """Wrap an existing SentencePiece ``.model`` (path or bytes) with a tight id layout.

    T5: ``num_sentinels`` (default 100) sentinels right after the pieces, ``<extra_id_i>``
    = ``num_pieces + num_sentinels - 1 - i`` (the seqio / HF T5 convention: 32000 pieces +
    100 sentinels = 32100 ids, which a 32128-row embedding holds). BERT: the pieces, plus
    any of ``pad cls sep mask`` the model lacks (looked up as ``<name>`` or ``[NAME]``)
    appended right after them.
    """
    proto = model if isinstance(model, bytes) else Path(model).read_bytes()
    probe = cls(proto, "bert", 1 << 30) if kind == "bert" else None
    if kind == "bert":
      return cls(proto, "bert", probe.num_pieces + len(probe.appended_specials))
    n = (0 if kind == "gpt" else 100) if num_sentinels is None else int(num_sentinels)
    pieces = spm.SentencePieceProcessor(model_proto=proto).get_piece_size()
    return cls(proto, kind, pieces + n, n)

  # -------------------------------------------------------------- ids
  def sentinel_id(self, i: int) -> int:
    """Id of ``<extra_id_i>`` (T5): ``vocab_size - 1 - i``."""
    if not 0 <= i < self.num_sentinels:
      raise IndexError(f"sentinel {i} out of range [0, {self.num_sentinels}).")
    return self.vocab_size - 1 - i

  @property
  def sentinel_ids(self) -> np.ndarray:
    """int32 [num_sentinels]; entry i is the id of ``<extra_id_i>`` (descending ids)."""
    return (self.vocab_size - 1 - np.arange(self.num_sentinels)).astype(np.int32)

  @property
  def special_ids(self) -> set[int]:
    """Ids that are never MLM targets: all control/unk pieces plus sentinels."""
    return set(self._special_ids)

  @property
  def random_token_high(self) -> int:
    """Exclusive upper bound of ids that can occur in tokenised text (= ``num_pieces``)."""
    return self.num_pieces

  # -------------------------------------------------------------- text <-> ids
  def encode(self, text: str) -> list[int]:
    """Token ids of one string (no BOS/EOS/SEP added)."""
    return self.sp.encode(text, out_type=int)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of many strings (multi-threaded inside SentencePiece)."""
    return self.sp.encode(list(texts), out_type=int)

  def decode(self, ids: Iterable[int]) -> str:
    """Text of ``ids``; control pieces and logical padding ids vanish, sentinels render
    as ``<extra_id_i>``."""
    parts, run = [], []
    for i in (int(x) for x in ids):
      if i < self.num_pieces:
        run.append(i)
        continue
      if run:
        parts.append(self.sp.decode(run))
        run = []
      if i >= self.vocab_size - self.num_sentinels:
        parts.append(f"<extra_id_{self.vocab_size - 1 - i}>")
    if run:
      parts.append(self.sp.decode(run))
    return " ".join(p for p in parts if p)

  # -------------------------------------------------------------- persistence
  def save(self, directory: str | os.PathLike) -> Path:
    """Write ``spm.model`` + ``tokenizer.json`` into ``directory`` (atomic renames)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    meta = dict(
      kind=self.kind,
      vocab_size=self.vocab_size,
      num_sentinels=self.num_sentinels,
      num_pieces=self.num_pieces,
      fingerprint=self.fingerprint,
      recipe_version=_RECIPE_VERSION,
    )
    for name, data in (
      (MODEL_FILE, self.model_proto),
      (META_FILE, json.dumps(meta, indent=1).encode()),
    ):
      fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{name}.")
      with os.fdopen(fd, "wb") as f:
        f.write(data)
      os.chmod(tmp, 0o644)
      os.replace(tmp, d / name)
    return d

  @classmethod
  def load(cls, directory: str | os.PathLike) -> "Tokenizer":
    """Load a directory written by :meth:`save`; checks the fingerprint."""
    d = Path(directory)
    if not (d / META_FILE).is_file() or not (d / MODEL_FILE).is_file():
      raise FileNotFoundError(
        f"No tokenizer in '{d}' (expected {MODEL_FILE} and "
        f"{META_FILE}); set data.tokenizer_dir='' to train one."
      )
    meta = json.loads((d / META_FILE).read_text())
    tok = cls(
      (d / MODEL_FILE).read_bytes(), meta["kind"], meta["vocab_size"], meta.get("num_sentinels", 0)
    )
    if meta["fingerprint"] not in (tok.fingerprint, tok._legacy_fingerprint):
      raise ValueError(f"Tokenizer in '{d}' is corrupt (fingerprint mismatch); delete it.")
    return tok

  def __repr__(self) -> str:
    return (
      f"Tokenizer(kind={self.kind}, vocab_size={self.vocab_size}, "
      f"num_pieces={self.num_pieces}, fingerprint={self.fingerprint})"
    )


def _sample_lines(lines: Iterable[str], max_chars: int) -> list[str]:
  """At most ~``max_chars`` characters of text: an even stride through a sequence, a prefix
  of any other iterable. Long lines are split into ``_MAX_LINE_CHARS`` pieces."""
  if isinstance(lines, Sequence) and not isinstance(lines, str):
    total = sum(len(s) for s in lines)
    stride = max(1, -(-total // max_chars))
    picked = list(lines[::stride])
  else:
    picked, total = [], 0
    for s in lines:
      if total >= max_chars:
        break
      picked.append(s)
      total += len(s)
  out = []
  for s in picked:
    s = s.strip()
    out.extend(s[i : i + _MAX_LINE_CHARS] for i in range(0, len(s), _MAX_LINE_CHARS))
  return out


def _training_error(
  e: RuntimeError, kind: str, vocab_size: int, num_sentinels: int, num_lines: int
) -> Exception:
  """One sentence for a corpus SentencePiece cannot train on (the cause and the fix)."""
  text = str(e)
  m = re.search(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)", text)
  if m:
    need = int(m.group(2)) + num_sentinels
    return DataError(
      f"SentencePiece cannot train a {kind} tokenizer of {vocab_size} ids on this corpus: "
      f"it has about {m.group(2)} distinct characters (pieces it must keep), more than "
      f"the {m.group(1)} pieces the vocabulary holds; raise the vocabulary size "
      f"(model.vocab_size, or --vocab_size of launch.prepare_data) above {need}, or "
      f"train on text with fewer distinct characters."
    )
  first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
  return DataError(
    f"SentencePiece cannot train a {kind} tokenizer of {vocab_size} ids on this "
    f"corpus ({num_lines} sampled lines; {first[:200]}); check that the corpus "
    f"is natural-language text with enough distinct words for the vocabulary."
  )


def train_tokenizer(
  lines: Iterable[str],
  kind: str = "bert",
  vocab_size: int = 32768,
  cache_dir: str | os.PathLike | None = None,
  num_sentinels: int | None = None,
  max_train_chars: int = 4_000_000,
) -> Tokenizer:
  """Train (or load from cache) a :class:`Tokenizer` on a sample of ``lines``.

  Args:
    lines: text lines (a list is stride-sampled, an iterator is read up to the budget).
    kind: ``'bert'`` (BPE, 7 fixed specials) or ``'t5'`` (unigram + sentinels).
    vocab_size: model-facing vocabulary size (BERT paper 32768, T5 base 32128).
    cache_dir: if given, the tokenizer lives in ``cache_dir/<key>/`` where ``key`` is a
      sha256 of (recipe version, kind, vocab_size, num_sentinels, sha256 of the sampled
      training text); an existing entry is loaded instead of training.
    num_sentinels: T5 only; default :func:`default_num_sentinels`.
    max_train_chars: training-text budget in characters (a few MB trains in seconds).
  """
  if kind not in ("bert", "t5", "gpt"):
    raise ValueError(f"kind must be 'bert', 't5' or 'gpt', got {kind!r}.")
  n_sent = (
    0
    if kind != "t5"
    else (default_num_sentinels(vocab_size) if num_sentinels is None else int(num_sentinels))
  )
  sample = [s for s in _sample_lines(lines, max_train_chars) if s]
  if not sample:
    raise ValueError("Cannot train a tokenizer on an empty corpus; provide non-empty text.")
  text_hash = hashlib.sha256("\n".join(sample).encode("utf-8")).hexdigest()
  key = hashlib.sha256(
    json.dumps([_RECIPE_VERSION, kind, int(vocab_size), n_sent, text_hash]).encode()
  ).hexdigest()[:16]
  entry = Path(cache_dir) / key if cache_dir is not None else None
  if entry is not None and (entry / META_FILE).is_file():
    return Tokenizer.load(entry)

  buf = io.BytesIO()
  common = dict(
    sentence_iterator=iter(sample),
    model_writer=buf,
    vocab_size=int(vocab_size) - n_sent,
    character_coverage=0.9995,
    hard_vocab_limit=False,
    num_threads=max(1, os.cpu_count() or 1),
    minloglevel=2,
    input_sentence_size=0,
    shuffle_input_sentence=False,
  )
  try:
    if kind == "bert":
      spm.SentencePieceTrainer.train(
        model_type="bpe",
        normalization_rule_name="nmt_nfkc_cf",
        pad_id=0,
        bos_id=1,
        eos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        bos_piece="<s>",
        eos_piece="</s>",
        unk_piece="<unk>",
        control_symbols=list(BERT_SPECIALS[4:]),
        **common,
      )
    else:
      spm.SentencePieceTrainer.train(
        model_type="unigram",
        normalization_rule_name="nmt_nfkc",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        **common,
      )
  except RuntimeError as e:
    raise _training_error(e, kind, int(vocab_size), n_sent, len(sample)) from None
  tok = Tokenizer(buf.getvalue(), kind, vocab_size, n_sent)
  if entry is not None:
    tok.save(entry)
  return tok


def load_or_train_tokenizer(
  tokenizer_dir: str,
  kind: str,
  vocab_size: int,
  lines: Iterable[str],
  cache_dir: Path | None,
  **train_kwargs,
) -> Tokenizer:
  """The tokenizer in ``tokenizer_dir`` (``data.tokenizer_dir``; checked against the model),
  or, if that is '', one trained on ``lines`` and cached under ``cache_dir``."""
  if tokenizer_dir:
    tok = Tokenizer.load(tokenizer_dir)
    if tok.kind != kind or tok.vocab_size > vocab_size:
      raise DataError(
        f"Tokenizer in '{tokenizer_dir}' is {tok.kind} with {tok.vocab_size} ids, "
        f"but the model needs {kind} with at most {vocab_size}; fix "
        f"data.tokenizer_dir or set it to '' to train one."
      )
    return tok
  return train_tokenizer(lines, kind, vocab_size, cache_dir=cache_dir, **train_kwargs)
