"""Pre-tokenised shards: prepare_shards, memory-mapped reading, stable ids, resume,
multi-process equivalence, held-out split and the errors of damaged or mismatched shards."""

import hashlib
import json

import numpy as np
import pytest
from shards_helpers import one_sentence as _one_sentence
from shards_helpers import same_batches as _same
from shards_helpers import shards_cfg as _cfg
from shards_helpers import write_corpus

from ntng_jax.data import (
  DataError,
  Tokenizer,
  build_dataset,
  chunk_token_stream,
  compute_input_and_target_lengths,
  reconstruct_from_span_corruption,
)
from ntng_jax.data.shard_writer import prepare_shards
from ntng_jax.data.shards import RowView, open_shards, read_manifest


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def bert_shards(corpus, tmp_path_factory):
  out = tmp_path_factory.mktemp("shards") / "bert"
  m = prepare_shards(
    str(corpus[0]),
    out,
    "bert",
    vocab_size=512,
    seq_len=32,
    shard_mb=0.05,
    tokenizer_train_chars=200_000,
  )  # several shard files
  return out, m


@pytest.fixture(scope="module")
def t5_shards(corpus, tmp_path_factory):
  out = tmp_path_factory.mktemp("shards") / "t5"
  m = prepare_shards(
    str(corpus[0]), out, "t5", vocab_size=512, seq_len=32, tokenizer_train_chars=200_000
  )
  return out, m


# ----------------------------------------------------------------------------- preparation
def test_manifest_and_chunks_match_in_memory_pipeline(bert_shards, corpus):
  out, m = bert_shards
  assert read_manifest(out) == m
  assert m["family"] == "bert" and m["chunk_len"] == m["seq_len"] == 32
  assert m["dtype"] == "uint16" and len(m["shards"]) > 1
  files = sorted(p.name for p in out.iterdir())
  assert {"manifest.json", "spm.model", "tokenizer.json"} <= set(files)
  a = corpus[0] / "a.txt"
  src = {s["path"]: s for s in m["sources"]}[str(a.resolve())]
  assert src["sha256"] == hashlib.sha256(a.read_bytes()).hexdigest()
  assert src["bytes"] == a.stat().st_size
  assert m["holdout"] == {"fraction": 0.02, "seed": 0, "num_heldout": round(0.02 * m["num_chunks"])}
  _, tok, chunks = open_shards(out)
  assert tok.fingerprint == m["tokenizer"]["fingerprint"] and tok.vocab_size == 512
  assert all(isinstance(a, np.memmap) for a in chunks.arrays)
  # Same docs in the same order as the text reader, $A <sep>, remainder dropped.
  expected = chunk_token_stream(tok.encode_batch(corpus[1]), 32, (tok.sep_id,))
  assert chunks.shape == expected.shape == (m["num_chunks"], 32)
  np.testing.assert_array_equal(chunks[np.arange(len(chunks))], expected)
  assert m["num_tokens"] == expected.size and 0 <= m["dropped_tokens"] < 32
  assert m["num_docs"] == len(corpus[1])
  # Indexing across shard boundaries: ints, slices, unsorted arrays; RowView.
  idx = np.array([len(chunks) - 1, 0, m["shards"][0]["num_chunks"], 5, 5])
  np.testing.assert_array_equal(chunks[idx], expected[idx])
  np.testing.assert_array_equal(chunks[3:9], expected[3:9])
  np.testing.assert_array_equal(chunks[7], expected[7])
  view = RowView(chunks, np.array([9, 2, 40]))
  np.testing.assert_array_equal(view[np.array([2, 0])], expected[[40, 9]])
  assert view.shape == (3, 32) and np.asarray(view).shape == (3, 32)


def test_t5_layout_and_span_corruption_round_trip(t5_shards):
  out, m = t5_shards
  raw, tgt = compute_input_and_target_lengths(32)
  assert m["chunk_len"] == raw and m["targets_length"] == tgt and m["seq_len"] == 32
  tok = Tokenizer.load(out)
  # Tight seqio/HF layout: sentinels right after the pieces.
  assert tok.vocab_size == tok.num_pieces + tok.num_sentinels <= 512
  assert tok.sentinel_id(0) == tok.num_pieces + tok.num_sentinels - 1
  ds = build_dataset(_cfg(out), "t5", 512, None)
  b = next(ds.train_iterator(16, seed=0))
  assert b["encoder_input_ids"].shape == (16, 32) and b["targets"].shape == (16, tgt)
  _, _, chunks = open_shards(out)
  rec = reconstruct_from_span_corruption(
    b["encoder_input_ids"], b["targets"], tok.sentinel_ids, tok.eos_id, b["target_weights"]
  )
  np.testing.assert_array_equal(rec, chunks[b["example_id"]])  # ids = chunk indices


# ----------------------------------------------------------------------------- training data
def test_shards_dataset_ids_split_and_workdir_copy(bert_shards, tmp_path):
  out, m = bert_shards
  ds = build_dataset(_cfg(out), "bert", 512, tmp_path / "run")
  n = m["num_chunks"]
  assert len(ds.train_ids) + len(ds.validation_ids) == n
  assert not set(ds.train_ids) & set(ds.validation_ids)
  assert ds.unigram_entropy_nats == m["unigram_entropy_nats"] > 0
  _, _, chunks = open_shards(out)
  b = next(ds.train_iterator(16, seed=0))
  assert b["input_ids"].dtype == np.int32 and b["input_ids"].shape == (16, 32)
  assert set(b["example_id"].tolist()) <= set(ds.train_ids.tolist())
  restored = b["input_ids"].copy()
  for r in range(16):
    w = b["mlm_weights"][r] > 0
    restored[r, b["mlm_positions"][r][w]] = b["mlm_labels"][r][w]
  np.testing.assert_array_equal(restored, chunks[b["example_id"]])
  # The tokenizer and manifest travel with the run.
  assert Tokenizer.load(tmp_path / "run" / "tokenizer").fingerprint == ds.tokenizer.fingerprint
  assert json.loads((tmp_path / "run" / "data_manifest.json").read_text()) == m
  # A workdir trained on other data refuses these shards.
  other = Tokenizer(ds.tokenizer.model_proto, "bert", 600)
  other.save(tmp_path / "run2" / "tokenizer")
  with pytest.raises(DataError, match="was trained with tokenizer") as e:
    build_dataset(_cfg(out), "bert", 600, tmp_path / "run2")
  _one_sentence(str(e.value))


def test_resume_mid_epoch_same_ids_in_same_order(bert_shards):
  out, _ = bert_shards
  ds = build_dataset(_cfg(out), "bert", 512, None)
  per_epoch = len(ds.train_ids) // 16
  it = ds.train_iterator(16, seed=7)
  ref = [next(it) for _ in range(per_epoch + 5)]  # crosses the epoch boundary
  for k in (3, per_epoch // 2, per_epoch, per_epoch + 1):
    a = build_dataset(_cfg(out), "bert", 512, None).train_iterator(16, seed=7)
    for _ in range(k):
      next(a)
    state = json.loads(json.dumps(a.get_state()))
    assert set(state) == {"epoch", "index"}  # a few integers
    b = build_dataset(_cfg(out), "bert", 512, None).train_iterator(16, seed=7)
    b.set_state(state)
    for r in ref[k : k + 4]:
      _same(r, next(b))
  epoch0 = np.concatenate([r["example_id"] for r in ref[:per_epoch]])
  assert len(set(epoch0.tolist())) == len(epoch0)


def test_two_processes_equal_one_process(bert_shards, t5_shards):
  for (out, _), fam in ((bert_shards, "bert"), (t5_shards, "t5")):
    ds = build_dataset(_cfg(out), fam, 512, None)
    one = ds.train_iterator(24, seed=1)
    two = [ds.train_iterator(24, seed=1, process_index=p, process_count=2) for p in (0, 1)]
    for _ in range(5):
      g = next(one)
      parts = [next(t) for t in two]
      assert len(parts[0]["example_id"]) == 12
      _same(g, {k: np.concatenate([p[k] for p in parts]) for k in g})


class _CountingChunks:
  """Wraps a chunk array and records which rows were read."""

  def __init__(self, base):
    self.base, self.shape, self.dtype, self.read = base, base.shape, base.dtype, set()

  def __getitem__(self, idx):
    self.read.update(np.atleast_1d(np.arange(self.shape[0])[idx]).tolist())
    return self.base[idx]

  def __len__(self):
    return self.shape[0]


def test_each_process_reads_only_its_share(bert_shards):
  from ntng_jax.data import BatchIterator

  out, _ = bert_shards
  ds = build_dataset(_cfg(out), "bert", 512, None)
  reads = []
  for p in range(2):
    counting = _CountingChunks(ds.train_chunks)
    it = BatchIterator(
      counting, 32, ds.objective, seed=0, process_index=p, process_count=2, example_ids=ds.train_ids
    )
    next(it)
    reads.append(counting.read)
  assert len(reads[0]) == len(reads[1]) == 16 and not reads[0] & reads[1]


# ----------------------------------------------------------------------------- errors
def test_mismatches_are_one_sentence(bert_shards, t5_shards, tmp_path):
  out, _ = bert_shards
  cases = [
    (dict(seq_len=64), "bert", 512, "hold chunks of 32 tokens"),
    (dict(), "bert", 256, "tokenizer with 512 ids but model.vocab_size is 256"),
    (dict(), "t5", 512, "prepared for bert but model.family is t5"),
    (dict(tokenizer_dir=str(t5_shards[0])), "bert", 512, "data.tokenizer_dir holds"),
    (dict(path=str(tmp_path / "nowhere")), "bert", 512, "does not exist"),
    (dict(path=str(tmp_path)), "bert", 512, "has no manifest.json"),
  ]
  for kw, fam, vocab, match in cases:
    with pytest.raises((DataError, FileNotFoundError), match=match) as e:
      build_dataset(_cfg(out, **kw), fam, vocab, None)
    _one_sentence(str(e.value))
  # T5: the raw chunk length follows seq_len and the noise settings.
  with pytest.raises(DataError, match="needs raw chunks of") as e:
    build_dataset(_cfg(t5_shards[0], noise_density=0.3), "t5", 512, None)
  _one_sentence(str(e.value))
  # Same tokenizer given explicitly is fine.
  build_dataset(_cfg(out, tokenizer_dir=str(out)), "bert", 512, None)


def test_damaged_shards_are_detected(bert_shards, tmp_path):
  import shutil

  out = tmp_path / "copy"
  shutil.copytree(bert_shards[0], out)
  m = json.loads((out / "manifest.json").read_text())
  np.save(out / m["shards"][1]["file"], np.zeros((3, 32), np.uint16))
  with pytest.raises(DataError, match="rebuild the shards") as e:
    build_dataset(_cfg(out), "bert", 512, None)
  _one_sentence(str(e.value))
  (out / m["shards"][1]["file"]).unlink()
  with pytest.raises(DataError, match="is missing"):
    build_dataset(_cfg(out), "bert", 512, None)


def test_prepare_errors(tmp_path, bert_shards):
  (tmp_path / "empty.txt").write_text("\n  \n")
  (tmp_path / "zero.txt").write_text("")
  (tmp_path / "tiny.txt").write_text("just a few words\n")
  for path, match in (
    (tmp_path / "missing.txt", "does not exist"),
    (tmp_path / "empty.txt", "no text"),
    (tmp_path / "zero.txt", "no text"),
    (tmp_path / "tiny.txt", "fewer tokens than one chunk"),
  ):
    with pytest.raises((DataError, FileNotFoundError), match=match) as e:
      prepare_shards(str(path), tmp_path / "out", "bert", vocab_size=64, seq_len=32)
    _one_sentence(str(e.value))
  with pytest.raises(DataError, match="already holds shards"):
    prepare_shards(str(tmp_path / "tiny.txt"), bert_shards[0], "bert")


# ----------------------------------------------------------------------------- validation sets
def test_validation_defaults_when_field_missing(bert_shards):
  ds = build_dataset(_cfg(bert_shards[0]), "bert", 512, None)
  sets = ds.validation_sets(16, max_batches=1)
  assert list(sets) == ["heldout"]
  _same(sets["heldout"][0], ds.validation_batches(16, max_batches=1)[0])
  with pytest.raises(DataError, match="held-out split, which is empty"):
    build_dataset(_cfg(bert_shards[0], validation_fraction=0.0), "bert", 512, None).validation_sets(
      16
    )
