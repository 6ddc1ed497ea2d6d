"""Plain-text corpus readers (no TensorFlow / datasets dependencies).

A corpus is a text file (one document per non-empty line), a ``.jsonl`` file (one document per
record's ``'text'`` field) or a directory searched recursively, in sorted path order, for
``.txt`` and ``.jsonl`` files. Documents are stripped; empty ones are dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from ntng_jax.data.errors import DataError

_SUFFIXES = (".txt", ".jsonl")


def _not_utf8(f: Path, e: UnicodeDecodeError, offset: int, line: int) -> DataError:
  bad = e.object[e.start : e.start + 1].hex()
  return DataError(
    f"Corpus file '{f}' is not UTF-8 text (byte 0x{bad} at offset "
    f"{offset + e.start}, line {line}); convert it to UTF-8 (e.g. `iconv -f "
    f"latin1 -t utf-8 IN > OUT` for Latin-1 text) or remove it from the corpus."
  )


def _lines(f: Path) -> Iterator[tuple[int, str]]:
  """``(line number, text)`` of a UTF-8 file (a leading byte-order mark is dropped); a byte
  sequence that is not UTF-8 raises a one-sentence :class:`DataError` (no silent U+FFFD)."""
  offset = 0
  with f.open("rb") as fh:
    for n, raw in enumerate(fh, 1):
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise _not_utf8(f, e, offset, n) from None
      if n == 1 and text.startswith("\ufeff"):
        text = text[1:]
      offset += len(raw)
      yield n, text


def _iter_file(f: Path) -> Iterator[str]:
  if f.suffix == ".jsonl":
    for n, raw in _lines(f):
      if not raw.strip():
        continue
      try:
        text = json.loads(raw)["text"]
        text = text.strip()
      except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise DataError(
          f"{f}:{n} is not a JSON object with a 'text' string ({e}); "
          f"fix the record or remove the file."
        ) from None
      if text:
        yield text
    return
  for _, line in _lines(f):
    s = line.strip()
    if s:
      yield s


def corpus_files(
  path: str | os.PathLike,
  what: str = "Corpus path",
  fix: str = "set data.path to a text file or a directory of .txt/.jsonl files, "
  "or use data.source='synthetic'",
) -> list[Path]:
  """The files of a corpus path in reading order.

  Raises:
    FileNotFoundError: the path does not exist (one sentence: ``what``, path, ``fix``).
  """
  p = Path(path).expanduser()
  if not str(path) or not p.exists():
    raise FileNotFoundError(f"{what} '{path}' does not exist; {fix}.")
  if p.is_dir():
    return sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in _SUFFIXES)
  return [p]


def iter_documents(files: list[Path]) -> Iterator[str]:
  """Stream the documents of ``files`` (from :func:`corpus_files`) in order."""
  for f in files:
    yield from _iter_file(f)


def file_digest(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> dict:
  """``{'path', 'bytes', 'sha256'}`` of one file (streamed)."""
  h, n = hashlib.sha256(), 0
  with open(path, "rb") as fh:
    while True:
      block = fh.read(chunk_bytes)
      if not block:
        break
      h.update(block)
      n += len(block)
  return {"path": str(Path(path).resolve()), "bytes": n, "sha256": h.hexdigest()}


def read_text_lines(path: str | os.PathLike) -> list[str]:
  """All documents of a corpus (see the module docstring), in a deterministic order.

  Raises:
    FileNotFoundError: the path does not exist.
    DataError (a ValueError): the path holds no readable text.
  """
  files = corpus_files(path)
  lines = list(iter_documents(files))
  if not lines:
    raise DataError(
      f"Corpus at '{path}' contains no text (no non-empty lines in "
      f"{len(files)} .txt/.jsonl file(s)); point data.path at a non-empty "
      f"corpus."
    )
  return lines
