"""Streamed sources (the engine behind data.source='tfds'), TFDS via tfds.testing.mock_data,
seqio Tasks over local files, validation-set config parsing, and the no-heavy-imports rule.

TFDS/seqio tests are skipped where tensorflow-datasets / seqio are not installed."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ntng_jax.data import (
  DataError,
  SyntheticCorpus,
  apply_validation_overrides,
  chunk_token_stream,
  pop_validation_overrides,
  reconstruct_from_span_corruption,
  train_tokenizer,
  validation_spec,
)
from ntng_jax.data.streaming import StreamIterator, build_stream_dataset, is_heldout

REPO = Path(__file__).resolve().parents[1]
TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "text"


def _same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def docs():
  lines = list(SyntheticCorpus(seed=1).lines(2500))
  lines[10] = lines[11] = ""  # empty records are skipped but keep their index
  return lines


@pytest.fixture(scope="module")
def tok(docs):
  return train_tokenizer([d for d in docs if d], "bert", 512)


def _share_docs(docs):
  def share(process_index, process_count, start):
    n = len(docs) // process_count  # even contiguous shares, like tfds.even_splits
    return iter(docs[process_index * n : (process_index + 1) * n][start:])

  return share


def _stream(docs, tok, batch=16, **kw):
  from ntng_jax.data import make_objective

  objective, _ = make_objective(dict(seq_len=32), "bert", tok)
  pidx, pcount = kw.get("process_index", 0), kw.get("process_count", 1)
  return StreamIterator(
    lambda start: _share_docs(docs)(pidx, pcount, start),
    tok.encode_batch,
    32,
    (tok.sep_id,),
    objective,
    batch,
    seed=3,
    holdout_fraction=0.1,
    window_batches=4,
    **kw,
  )


# ----------------------------------------------------------------------------- streams
def test_stream_chunks_holdout_and_resume(docs, tok):
  it = _stream(docs, tok)
  ref = [next(it) for _ in range(150)]  # several epochs
  train_docs = [d for d in docs if d and not is_heldout(d, 0.1)]
  held = [d for d in docs if d and is_heldout(d, 0.1)]
  assert 0.05 < len(held) / len(docs) < 0.15
  chunks = chunk_token_stream(tok.encode_batch(train_docs), 32, (tok.sep_id,))
  per_epoch = len(chunks) // 16
  assert ref[per_epoch]["example_id"].tolist() != ref[0]["example_id"].tolist()
  b = ref[5]
  restored = b["input_ids"].copy()
  for r in range(16):
    w = b["mlm_weights"][r] > 0
    restored[r, b["mlm_positions"][r][w]] = b["mlm_labels"][r][w]
  np.testing.assert_array_equal(restored, chunks[b["example_id"]])  # ids = stream chunk index
  epoch0 = np.concatenate([r["example_id"] for r in ref[:per_epoch]])
  assert len(set(epoch0.tolist())) == per_epoch * 16
  for k in (1, 4, 7, per_epoch, per_epoch + 3):
    a = _stream(docs, tok)
    for _ in range(k):
      next(a)
    state = json.loads(json.dumps(a.get_state()))
    assert len(state) == 6 and all(isinstance(v, int) for v in state.values())
    b = _stream(docs, tok)
    b.set_state(state)
    for r in ref[k : k + 6]:
      _same(r, next(b))


def test_stream_processes_read_disjoint_shares(docs, tok):
  parts = [_stream(docs, tok, batch=16, process_index=p, process_count=2) for p in (0, 1)]
  got = [[next(p) for _ in range(10)] for p in parts]
  assert got[0][0]["input_ids"].shape == (8, 32)
  ids = [set(np.concatenate([b["example_id"] for b in g]).tolist()) for g in got]
  assert not ids[0] & ids[1]
  assert {i % 2 for i in ids[0]} == {0} and {i % 2 for i in ids[1]} == {1}


def test_stream_dataset_and_heldout_validation(docs, tmp_path):
  cfg = dict(
    seq_len=32,
    validation_fraction=0.1,
    validation={"heldout": "heldout", "txt": str(tmp_path / "v.txt")},
  )
  (tmp_path / "v.txt").write_text("\n".join(docs[:300]) + "\n")
  ds = build_stream_dataset(
    cfg, "bert", 512, tmp_path / "run", share_docs=_share_docs(docs), source="test-stream"
  )
  from ntng_jax.data import ValidationResolver
  from ntng_jax.data import validation_spec as spec

  ds.validation_sources = spec(cfg)
  ds.resolver = ValidationResolver(ds.tokenizer, "bert", 32, (ds.tokenizer.sep_id,), None)
  sets = ds.validation_sets(16, max_batches=2)
  assert list(sets) == ["heldout", "txt"] and len(sets["heldout"]) == 2
  held = [d for d in docs if d and is_heldout(d, 0.1)]
  expected = chunk_token_stream(ds.tokenizer.encode_batch(held), 32, (ds.tokenizer.sep_id,))
  b = sets["heldout"][0]
  restored = b["input_ids"].copy()
  for r in range(16):
    w = b["mlm_weights"][r] > 0
    restored[r, b["mlm_positions"][r][w]] = b["mlm_labels"][r][w]
  np.testing.assert_array_equal(restored, expected[:16])
  batch = next(ds.train_iterator(16, seed=0))
  assert batch["input_ids"].shape == (16, 32) and 0 < ds.unigram_entropy_nats < np.log(512)


# ----------------------------------------------------------------------------- config
def test_validation_spec_and_overrides():
  from ml_collections import ConfigDict

  assert validation_spec({}) == {"heldout": "heldout"}
  assert validation_spec(ConfigDict(dict(validation=None))) == {"heldout": "heldout"}
  assert list(validation_spec({"validation": {"b": "/x.txt", "a": "heldout"}})) == ["a", "b"]
  assert validation_spec({"validation": "heldout,shakes=/s.txt"}) == {
    "heldout": "heldout",
    "shakes": "/s.txt",
  }
  with pytest.raises(DataError, match="not a simple name"):
    validation_spec({"validation": {"a b": "heldout"}})
  argv, found = pop_validation_overrides(
    [
      "prog",
      "--config.data.validation.heldout=heldout",
      "--config.train.x=1",
      "--config.data.validation.shakes",
      "/s.txt",
    ]
  )
  assert argv == ["prog", "--config.train.x=1"]
  assert found == {"heldout": "heldout", "shakes": "/s.txt"}
  c = ConfigDict(dict(data=ConfigDict(dict(validation=ConfigDict({"heldout": "heldout"})))))
  c.lock()
  apply_validation_overrides(c, found)
  assert dict(c.data.validation) == {"heldout": "heldout", "shakes": "/s.txt"}
  c2 = ConfigDict(dict(data=ConfigDict(dict(source="text"))))
  apply_validation_overrides(c2, {"shakes": "/s.txt"})
  assert validation_spec(c2.data) == {"shakes": "/s.txt"}


def test_no_heavy_imports(tmp_path):
  """import ntng_jax / ntng_jax.data and building text + shards datasets load no
  TensorFlow, seqio or TFDS."""
  corpus = tmp_path / "c.txt"
  corpus.write_text("\n".join(SyntheticCorpus(seed=0).lines(800)) + "\n")
  code = f"""
import sys
import ntng_jax, ntng_jax.data
from ntng_jax.data import build_dataset
from ntng_jax.data.shard_writer import prepare_shards
from ntng_jax.data import streaming, validation
prepare_shards({str(corpus)!r}, {str(tmp_path / "s")!r}, 'bert', vocab_size=256, seq_len=32)
ds = build_dataset(dict(source='shards', path={str(tmp_path / "s")!r}, seq_len=32), 'bert', 256,
                   None)
next(ds.train_iterator(8, seed=0))
ds = build_dataset(dict(source='text', path={str(corpus)!r}, seq_len=32), 't5', 256, None)
next(ds.train_iterator(8, seed=0))
bad = {{'tensorflow', 'seqio', 'tensorflow_datasets'}}
sys.exit(sorted(m for m in sys.modules if m.split('.')[0] in bad) and 1 or 0)
"""
  p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
  assert p.returncode == 0, p.stderr[-2000:]


# ----------------------------------------------------------------------------- tfds
def test_tfds_source_with_mock_data(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  from ntng_jax.data import build_dataset

  with tfds.testing.mock_data(num_examples=400, policy=tfds.testing.MockPolicy.USE_CODE):
    cfg = dict(
      source="tfds", path="lm1b", seq_len=32, validation_fraction=0.05, tfds_text_key="text"
    )
    ds = build_dataset(cfg, "bert", 256, tmp_path / "run")
    it = ds.train_iterator(8, seed=0)
    first = [next(it) for _ in range(3)]
    assert first[0]["input_ids"].shape == (8, 32)
    again = build_dataset(cfg, "bert", 256, tmp_path / "run").train_iterator(8, seed=0)
    again.set_state(json.loads(json.dumps(it.get_state())))
    later = build_dataset(cfg, "bert", 256, tmp_path / "run").train_iterator(8, seed=0)
    for _ in range(3):
      next(later)
    _same(next(again), next(later))
    sets = ds.validation_sets(4, max_batches=1)
    assert list(sets) == ["heldout"]


def test_tfds_unknown_name_is_one_sentence(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  from ntng_jax.data import build_dataset

  with pytest.raises(DataError, match="does not exist") as e:
    build_dataset(
      dict(source="tfds", path="no_such_dataset_xyz:1.0.0", seq_len=32), "bert", 256, tmp_path
    )
  msg = str(e.value)
  assert "\n" not in msg and msg.endswith(".") and "no_such_dataset_xyz" in msg


def test_tfds_spec_parsing():
  # Pure string handling; importing tfds_source does not import TFDS until it is used.
  from ntng_jax.data.tfds_source import parse_tfds_spec

  assert parse_tfds_spec("c4/en:3.1.0") == ("c4/en:3.1.0", None)
  assert parse_tfds_spec("tfds:c4/en:3.1.0:validation") == ("c4/en:3.1.0", "validation")
  assert parse_tfds_spec("c4/en:validation") == ("c4/en", "validation")
  assert parse_tfds_spec("lm1b") == ("lm1b", None)
  with pytest.raises(DataError, match="empty"):
    parse_tfds_spec("")


# ----------------------------------------------------------------------------- seqio
def test_seqio_tasks_over_local_files(tmp_path):
  seqio = pytest.importorskip("seqio")
  from ntng_jax.data import compute_input_and_target_lengths, seqio_tasks
  from ntng_jax.data.shard_writer import prepare_shards
  from ntng_jax.data.shards import open_shards

  assert "ntng_t5_span_corruption_c4" in seqio.TaskRegistry.names()
  text = tmp_path / "train.txt"
  text.write_text("\n".join(SyntheticCorpus(seed=2).lines(1500)) + "\n")
  for kind in ("bert", "t5"):
    out = tmp_path / kind
    prepare_shards(str(text), out, kind, vocab_size=512, seq_len=32)
    _, tok, chunks = open_shards(out)
    names = seqio_tasks.register_text_tasks(
      f"local_{kind}", [text], **{f"{kind}_tokenizer": str(out)}
    )
    task = seqio.get_mixture_or_task(names[0])
    tlen = 32 if kind == "bert" else compute_input_and_target_lengths(32)[1]
    ds = task.get_dataset(
      sequence_length={"inputs": 32, "targets": tlen}, split="train", shuffle=False, seed=0
    )
    exs = list(ds.take(20).as_numpy_iterator())
    assert len(exs) == 20
    for i, ex in enumerate(exs):
      assert ex["inputs"].shape == (32,)
      if kind == "bert":
        np.testing.assert_array_equal(ex["targets"], chunks[i])  # same chunks, in order
        w = ex["mlm_weights"] > 0
        restored = ex["inputs"].copy()
        restored[ex["mlm_positions"][w]] = ex["mlm_labels"][w]
        np.testing.assert_array_equal(restored, chunks[i])
      else:
        rec = reconstruct_from_span_corruption(
          ex["inputs"][None], ex["targets"][None], tok.sentinel_ids, tok.eos_id
        )
        np.testing.assert_array_equal(rec[0], chunks[i])
