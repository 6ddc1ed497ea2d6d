"""Plain-text corpus readers (no TensorFlow / datasets dependencies)."""
from __future__ import annotations

import json
import os
from pathlib import Path

_SUFFIXES = (".txt", ".jsonl")


def _read_file(f: Path) -> list[str]:
    if f.suffix == ".jsonl":
        out = []
        with f.open(encoding="utf-8") as fh:
            for n, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                try:
                    text = json.loads(raw)["text"]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ValueError(f"{f}:{n} is not a JSON object with a 'text' field ({e}); "
                                     f"fix the record or remove the file.") from None
                if text.strip():
                    out.append(text.strip())
        return out
    with f.open(encoding="utf-8", errors="replace") as fh:
        return [s for s in (line.strip() for line in fh) if s]


def read_text_lines(path: str | os.PathLike) -> list[str]:
    """Documents of a corpus, in a deterministic order, stripped, empty ones dropped.

    ``path`` is a text file (one document per non-empty line; ``.jsonl`` files give one
    document per record's ``'text'`` field) or a directory searched recursively, in sorted
    order, for ``.txt`` and ``.jsonl`` files.

    Raises:
      FileNotFoundError: the path does not exist.
      ValueError: the path holds no readable text.
    """
    p = Path(path).expanduser()
    if not str(path) or not p.exists():
        raise FileNotFoundError(f"Corpus path '{path}' does not exist; set data.path to a text "
                                f"file or a directory of .txt/.jsonl files, or use "
                                f"data.source='synthetic'.")
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in _SUFFIXES) \
        if p.is_dir() else [p]
    lines = [s for f in files for s in _read_file(f)]
    if not lines:
        raise ValueError(f"Corpus at '{path}' contains no text (no non-empty lines in "
                         f"{len(files)} .txt/.jsonl file(s)); point data.path at a non-empty "
                         f"corpus.")
    return lines
