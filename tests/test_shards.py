"""Pre-tokenised shards: prepare_shards / launch.prepare_data, memory-mapped reading, stable
ids, resume, multi-process equivalence, tokenizer handling, named validation sets, errors."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from ntng_jax.data import (
  DataError,
  SyntheticCorpus,
  Tokenizer,
  build_dataset,
  chunk_token_stream,
  compute_input_and_target_lengths,
  reconstruct_from_span_corruption,
)
from ntng_jax.data.shards import RowView, open_shards, prepare_shards, read_manifest

REPO = Path(__file__).resolve().parents[1]
TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "text"
needs_text = pytest.mark.skipif(
  not (TEXT / "tinyshakespeare" / "train.txt").is_file(), reason=f"{TEXT} is absent"
)


def _cfg(shards_dir, **kw):
  base = dict(
    source="shards",
    path=str(shards_dir),
    seq_len=32,
    validation_fraction=0.05,
    tokenizer_dir="",
    max_predictions=0,
    noise_density=0.15,
    mean_noise_span_length=3.0,
  )
  base.update(kw)
  return base


def _same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _one_sentence(msg: str):
  assert "\n" not in msg and msg.endswith(".") and len(msg) < 400, msg


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  d = tmp_path_factory.mktemp("corpus")
  lines = list(SyntheticCorpus(seed=0).lines(3000))
  (d / "a.txt").write_text("\n".join(lines[:2000]) + "\n\n")
  (d / "sub").mkdir()
  (d / "sub" / "b.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in lines[2000:]))
  return d, lines


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


def test_existing_sentencepiece_model(corpus, tmp_path):
  text = tmp_path / "train.txt"
  text.write_text("\n".join(corpus[1][:1500]) + "\n")
  # A model trained outside our code, with SentencePiece's default ids (unk=0 bos=1 eos=2).
  spm.SentencePieceTrainer.train(
    input=str(text),
    model_prefix=str(tmp_path / "plain"),
    vocab_size=300,
    model_type="bpe",
    minloglevel=2,
  )
  m = prepare_shards(
    str(text), tmp_path / "b", "bert", seq_len=32, tokenizer=str(tmp_path / "plain.model")
  )
  tok = Tokenizer.load(tmp_path / "b")
  assert tok.num_pieces == 300 and tok.vocab_size == 304  # pad cls sep mask appended
  assert (tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id) == (300, 301, 302, 303)
  assert m["tokenizer"]["origin"].endswith("plain.model")
  ds = build_dataset(_cfg(tmp_path / "b"), "bert", 320, None)
  b = next(ds.train_iterator(8, seed=0))
  assert (b["input_ids"] == 303).any() and b["input_ids"].max() < 304
  # T5 needs pad/eos pieces; the T5 convention is pad=0 eos=1 unk=2.
  spm.SentencePieceTrainer.train(
    input=str(text),
    model_prefix=str(tmp_path / "t5"),
    vocab_size=300,
    pad_id=0,
    eos_id=1,
    unk_id=2,
    bos_id=-1,
    minloglevel=2,
  )
  prepare_shards(
    str(text),
    tmp_path / "t",
    "t5",
    seq_len=32,
    tokenizer=str(tmp_path / "t5.model"),
    num_sentinels=20,
  )
  tok = Tokenizer.load(tmp_path / "t")
  assert tok.vocab_size == 320 and tok.sentinel_id(0) == 319 and tok.sentinel_id(19) == 300
  with pytest.raises(ValueError, match="pad and eos"):
    prepare_shards(str(text), tmp_path / "t2", "t5", tokenizer=str(tmp_path / "plain.model"))
  (tmp_path / "junk.model").write_bytes(b"not a model")
  with pytest.raises(DataError, match="not a SentencePiece model"):
    prepare_shards(str(text), tmp_path / "t3", "t5", tokenizer=str(tmp_path / "junk.model"))


# ----------------------------------------------------------------------------- validation sets
@needs_text
def test_real_text_shards_and_named_validation_sets(tmp_path):
  train = TEXT / "tinyshakespeare" / "train.txt"
  out = tmp_path / "shards"
  m = prepare_shards(str(train), out, "bert", vocab_size=1024, seq_len=64)
  assert m["num_chunks"] > 2000
  # A second corpus prepared with the training tokenizer, all of it for validation.
  val_shards = tmp_path / "val_shards"
  prepare_shards(
    str(TEXT / "tinyshakespeare" / "validation.txt"),
    val_shards,
    "bert",
    seq_len=64,
    tokenizer=str(out),
    holdout_fraction=0.0,
  )
  validation = {
    "shakespeare_txt": str(TEXT / "tinyshakespeare" / "validation.txt"),
    "in_domain": "heldout",
    "shakespeare_shards": str(val_shards),
  }
  cfg = _cfg(out, seq_len=64, validation=validation)
  ds = build_dataset(cfg, "bert", 1024, tmp_path / "run")
  sets = ds.validation_sets(32, seed=0, max_batches=2)
  assert list(sets) == ["in_domain", "shakespeare_txt", "shakespeare_shards"]  # heldout first
  for name, batches in sets.items():
    assert len(batches) == 2 and batches[0]["input_ids"].shape == (32, 64), name
  # The text file and the shards of it give the same chunks (same tokenizer and layout).
  _same(sets["shakespeare_txt"][0], sets["shakespeare_shards"][0])
  again = build_dataset(cfg, "bert", 1024, tmp_path / "run").validation_sets(32, max_batches=2)
  for name in sets:  # fixed masks
    for a, b in zip(sets[name], again[name]):
      _same(a, b)
  tok = ds.tokenizer
  line = "First Citizen: Before we proceed any further, hear me speak."
  assert tok.decode(tok.encode(line)) == line.lower()
  # A missing validation path fails at build time, in one sentence.
  bad = dict(cfg, validation={"heldout": "heldout", "x": str(tmp_path / "nope.txt")})
  with pytest.raises(FileNotFoundError, match="Validation set 'x'") as e:
    build_dataset(bad, "bert", 1024, None)
  _one_sentence(str(e.value))
  # Validation shards from another tokenizer are refused.
  other = tmp_path / "other"
  prepare_shards(
    str(TEXT / "tinyshakespeare" / "validation.txt"), other, "bert", vocab_size=512, seq_len=64
  )
  with pytest.raises(DataError, match="were tokenised with tokenizer"):
    build_dataset(dict(cfg, validation={"o": str(other)}), "bert", 1024, None)


def test_validation_defaults_when_field_missing(bert_shards):
  ds = build_dataset(_cfg(bert_shards[0]), "bert", 512, None)
  sets = ds.validation_sets(16, max_batches=1)
  assert list(sets) == ["heldout"]
  _same(sets["heldout"][0], ds.validation_batches(16, max_batches=1)[0])
  with pytest.raises(DataError, match="held-out split, which is empty"):
    build_dataset(_cfg(bert_shards[0], validation_fraction=0.0), "bert", 512, None).validation_sets(
      16
    )


# ----------------------------------------------------------------------------- CLI
def test_prepare_data_cli(tmp_path, corpus):
  text = tmp_path / "c.txt"
  text.write_text("\n".join(corpus[1][:600]) + "\n")

  def run(*args):
    return subprocess.run(
      [sys.executable, "-m", "launch.prepare_data", *args],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
    )

  p = run(
    "--model=t5",
    f"--input={text}",
    f"--output={tmp_path / 'o'}",
    "--vocab_size=300",
    "--seq_len=16",
  )
  assert p.returncode == 0, p.stderr
  summary = json.loads(p.stdout.strip().splitlines()[-1])
  assert summary["chunk_len"] == compute_input_and_target_lengths(16)[0]
  assert summary["vocab_size"] <= 300 and (tmp_path / "o" / "chunks-00000.npy").is_file()
  (tmp_path / "empty.txt").write_text("\n")
  for path, match in (
    (tmp_path / "missing", "does not exist"),
    (tmp_path / "empty.txt", "contains no text"),
  ):
    p = run("--model=bert", f"--input={path}", f"--output={tmp_path / 'o2'}")
    assert p.returncode == 2
    lines = [s for s in p.stderr.splitlines() if s.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], lines
  p = run("--model=bert")
  assert p.returncode == 2 and "--input, --output is required" in p.stderr


# ----------------------------------------------------------------------------- end to end
@needs_text
@pytest.mark.slow
@pytest.mark.parametrize("family", ["bert", "t5"])
def test_pretrain_on_real_text_shards_with_two_domains(tmp_path, family):
  """launch.prepare_data on one domain's train.txt, then launch.pretrain from the shards under an
  RST budget, validated on the in-domain held-out split and on the other domain."""
  from conftest import run_module

  shards = tmp_path / "shards"
  run_module(
    "launch.prepare_data",
    f"--model={family}",
    "--vocab_size=2048",
    "--seq_len=64",
    f"--input={TEXT / 'tinyshakespeare' / 'train.txt'}",
    f"--output={shards}",
  )
  assert (shards / "manifest.json").is_file() and (shards / "spm.model").is_file()
  run = tmp_path / "run"
  run_module(
    "launch.pretrain",
    f"--config=configs/{family}.py:size=tiny",
    f"--workdir={run}",
    "--config.data.source=shards",
    f"--config.data.path={shards}",
    f"--config.data.validation.wikipedia={TEXT / 'wikipedia_en' / 'validation.txt'}",
    "--config.train.budget_hours=0.004",
    "--config.train.validation_batches=4",
    "--config.train.eval_every_rst_minutes=0.08",
  )
  records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  train = [r["train_loss"] for r in records if "train_loss" in r]
  assert np.mean(train[-5:]) < np.mean(train[:5]) - 0.5
  evals = [r for r in records if "validation_loss/wikipedia" in r]
  assert len(evals) >= 2 and all("validation_loss/heldout" in r for r in evals)
  for name in ("heldout", "wikipedia"):
    assert evals[-1][f"validation_loss/{name}"] < evals[0][f"validation_loss/{name}"]
  summary = json.loads((run / "summary.json").read_text())
  assert summary["stopped_because"] == "budget"
  # Priced by the built-in table of the tiny shape, never by a start-up calibration, so the
  # number of steps (and the losses asserted above) do not depend on machine load.
  assert summary["rst_table"] == f"builtin-{family}-tiny-cpu"
  assert set(summary["final_validation_losses"]) == {"heldout", "wikipedia"}
