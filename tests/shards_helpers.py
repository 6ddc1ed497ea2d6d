"""Shared by the shards tests (test_shards.py, test_shards_text.py): paths, a config, a corpus."""

import json
from pathlib import Path

import numpy as np
import pytest

from ntng_jax.data import SyntheticCorpus

REPO = Path(__file__).resolve().parents[1]
TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "text"
needs_text = pytest.mark.skipif(
  not (TEXT / "tinyshakespeare" / "train.txt").is_file(), reason=f"{TEXT} is absent"
)


def shards_cfg(shards_dir, **kw) -> dict:
  """A hand-built data config reading `shards_dir` (seq_len 32, 5% held out)."""
  return {**dict(source="shards", path=str(shards_dir), seq_len=32, validation_fraction=0.05), **kw}


def same_batches(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def one_sentence(msg: str):
  assert "\n" not in msg and msg.endswith(".") and len(msg) < 400, msg


def write_corpus(d: Path) -> tuple[Path, list[str]]:
  """A directory corpus of 3,000 synthetic lines: a .txt file and a nested .jsonl file."""
  lines = list(SyntheticCorpus(seed=0).lines(3000))
  (d / "a.txt").write_text("\n".join(lines[:2000]) + "\n\n")
  (d / "sub").mkdir()
  (d / "sub" / "b.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in lines[2000:]))
  return d, lines
