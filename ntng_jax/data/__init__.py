"""Data: corpus -> tokenizer -> fixed-length chunks (with stable ids) -> objective -> batches.

``build_dataset(cfg.data, model_family, vocab_size, workdir)`` is the entry point; batches
follow the contract in ``docs/architecture.md``. Nothing here imports TensorFlow/seqio/TFDS.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ntng_jax.data.objectives import (compute_input_and_target_lengths, default_max_predictions,
                                      mask_for_mlm, reconstruct_from_span_corruption,
                                      span_corruption)
from ntng_jax.data.pipeline import (BatchIterator, chunk_token_stream, holdout_split,
                                    unigram_entropy_nats)
from ntng_jax.data.sources import read_text_lines
from ntng_jax.data.synthetic import SyntheticCorpus
from ntng_jax.data.tokenizers import Tokenizer, default_num_sentinels, train_tokenizer

__all__ = ["BatchIterator", "Dataset", "SyntheticCorpus", "Tokenizer", "build_dataset",
           "chunk_token_stream", "compute_input_and_target_lengths", "default_max_predictions",
           "default_num_sentinels", "holdout_split", "mask_for_mlm", "read_text_lines",
           "reconstruct_from_span_corruption", "span_corruption", "train_tokenizer",
           "unigram_entropy_nats"]

_FAMILY_KIND = {"bert": "bert", "t5": "t5"}


@dataclasses.dataclass
class Dataset:
    """A tokenised, chunked corpus plus its objective.

    Attributes:
      family: 'bert' or 't5'. tokenizer: :class:`Tokenizer`.
      train_chunks / validation_chunks: int32 [N, C] (C = seq_len for BERT, the raw span-
        corruption length for T5); train_ids / validation_ids: int64 [N] chunk ids.
      objective: ``(rng, tokens [b, C]) -> batch dict`` (MLM or span corruption).
      unigram_entropy_nats: entropy of the training tokens (BERT: non-special tokens only),
        i.e. the loss a context-free model can reach, in nats/token.
      meta: source, tokenizer fingerprint, counts and lengths.
    """
    family: str
    tokenizer: Tokenizer
    train_chunks: np.ndarray
    validation_chunks: np.ndarray
    train_ids: np.ndarray
    validation_ids: np.ndarray
    objective: Callable[[np.random.Generator, np.ndarray], dict]
    unigram_entropy_nats: float
    meta: dict[str, Any]

    def train_iterator(self, batch_size: int, seed: int, process_index: int = 0,
                       process_count: int = 1) -> BatchIterator:
        """Infinite shuffled iterator over training chunks (see :class:`BatchIterator`)."""
        return BatchIterator(self.train_chunks, batch_size, self.objective, seed=seed,
                             process_index=process_index, process_count=process_count,
                             example_ids=self.train_ids)

    def validation_batches(self, batch_size: int, seed: int = 0,
                           max_batches: int | None = None) -> list[dict]:
        """Full global batches over the held-out chunks in order, with masks/spans fixed by
        ``seed`` (identical on every call). If fewer chunks than ``batch_size`` exist, one
        batch of all of them."""
        n = len(self.validation_chunks)
        if n == 0:
            raise ValueError("No validation chunks; set data.validation_fraction > 0.")
        bs = min(batch_size, n)
        it = BatchIterator(self.validation_chunks, bs, self.objective, seed=seed, shuffle=False,
                           example_ids=self.validation_ids)
        count = it.batches_per_epoch if max_batches is None else min(max_batches,
                                                                     it.batches_per_epoch)
        return [it.batch_at(0, i) for i in range(count)]


def _get(cfg, name: str, default):
    try:
        value = cfg.get(name, default)
    except AttributeError:
        value = getattr(cfg, name, default)
    return default if value is None else value


def _corpus_lines(cfg) -> tuple[list[str], str]:
    source = _get(cfg, "source", "synthetic")
    if source == "synthetic":
        corpus = SyntheticCorpus(seed=int(_get(cfg, "corpus_seed", 0)))
        return list(corpus.lines(int(_get(cfg, "num_lines", 20000)))), "synthetic"
    if source == "text":
        path = _get(cfg, "path", "")
        return read_text_lines(path), f"text:{path}"
    raise ValueError(f"data.source must be 'synthetic' or 'text', got {source!r}.")


def _tokenize_and_chunk(lines: list[str], tok: Tokenizer, chunk_len: int, append: tuple,
                        cache_dir: Path | None) -> np.ndarray:
    """Chunks int32 [N, chunk_len]; cached as .npy under ``cache_dir`` keyed by corpus text,
    tokenizer fingerprint, chunk length and separator ids."""
    path = None
    if cache_dir is not None:
        h = hashlib.sha256()
        for s in lines:
            h.update(s.encode("utf-8"))
            h.update(b"\n")
        key = hashlib.sha256(f"{h.hexdigest()}|{tok.fingerprint}|{chunk_len}|{append}"
                             .encode()).hexdigest()[:16]
        path = cache_dir / f"chunks-{key}.npy"
        if path.is_file():
            return np.load(path)
    chunks = chunk_token_stream(tok.encode_batch(lines), chunk_len, append)
    if path is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".chunks.", suffix=".npy")
        with os.fdopen(fd, "wb") as f:
            np.save(f, chunks)
        os.replace(tmp, path)
    return chunks


def build_dataset(cfg_data, model_family: str, vocab_size: int,
                  workdir: str | os.PathLike | None) -> Dataset:
    """Build the :class:`Dataset` for ``model_family`` ('bert' | 't5').

    ``cfg_data`` fields (ConfigDict or dict): ``source`` ('synthetic' | 'text'), ``path``,
    ``seq_len`` (BERT length / T5 encoder length), ``num_lines``, ``corpus_seed``,
    ``validation_fraction`` (default 0.02), ``max_predictions`` (0 = auto), ``noise_density``
    (0.15), ``mean_noise_span_length`` (3.0), ``tokenizer_dir`` ('' = train and cache under
    ``workdir/tokenizer``). Tokenised chunks are cached under ``workdir/data_cache``.
    """
    if model_family not in _FAMILY_KIND:
        raise ValueError(f"model_family must be 'bert' or 't5', got {model_family!r}.")
    kind = _FAMILY_KIND[model_family]
    work = Path(workdir) if workdir else None
    lines, source = _corpus_lines(cfg_data)

    tok_dir = _get(cfg_data, "tokenizer_dir", "")
    if tok_dir:
        tok = Tokenizer.load(tok_dir)
        if tok.kind != kind or tok.vocab_size != vocab_size:
            raise ValueError(f"Tokenizer in '{tok_dir}' is {tok.kind} with vocab "
                             f"{tok.vocab_size}, but the model needs {kind} with {vocab_size}; "
                             f"fix data.tokenizer_dir or set it to '' to train one.")
    else:
        tok = train_tokenizer(lines, kind, vocab_size,
                              cache_dir=work / "tokenizer" if work else None)

    seq_len = int(_get(cfg_data, "seq_len", 128))
    if kind == "bert":
        max_pred = int(_get(cfg_data, "max_predictions", 0)) or default_max_predictions(seq_len)
        chunk_len, targets_len, append = seq_len, None, (tok.sep_id,)
        objective = functools.partial(
            mask_for_mlm, special_ids=tuple(sorted(tok.special_ids)), mask_id=tok.mask_id,
            vocab_size=tok.random_token_high, max_predictions=max_pred)
    else:
        nd = float(_get(cfg_data, "noise_density", 0.15))
        msl = float(_get(cfg_data, "mean_noise_span_length", 3.0))
        chunk_len, targets_len = compute_input_and_target_lengths(seq_len, nd, msl)
        max_pred, append = None, (tok.eos_id,)
        objective = functools.partial(
            span_corruption, sentinel_ids=tok.sentinel_ids, eos_id=tok.eos_id,
            pad_id=tok.pad_id, noise_density=nd, mean_noise_span_length=msl,
            targets_length=targets_len)

    chunks = _tokenize_and_chunk(lines, tok, chunk_len, append,
                                 work / "data_cache" if work else None)
    frac = float(_get(cfg_data, "validation_fraction", 0.02))
    train_ids, val_ids = holdout_split(len(chunks), frac, seed=0)
    train_chunks, val_chunks = chunks[train_ids], chunks[val_ids]
    exclude = sorted(tok.special_ids) if kind == "bert" else ()
    meta = dict(source=source, family=model_family, tokenizer_fingerprint=tok.fingerprint,
                vocab_size=tok.vocab_size, num_pieces=tok.num_pieces, num_lines=len(lines),
                num_tokens=int(chunks.size), num_chunks=len(chunks), num_train=len(train_ids),
                num_validation=len(val_ids), chunk_len=chunk_len, seq_len=seq_len,
                targets_length=targets_len, max_predictions=max_pred)
    return Dataset(family=model_family, tokenizer=tok, train_chunks=train_chunks,
                   validation_chunks=val_chunks, train_ids=train_ids, validation_ids=val_ids,
                   objective=objective,
                   unigram_entropy_nats=unigram_entropy_nats(train_chunks, tok.vocab_size,
                                                             exclude),
                   meta=meta)
