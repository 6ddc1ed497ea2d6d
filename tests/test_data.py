"""Tests for ntng_jax.data: corpus, tokenizer, objectives, iterator, sources, build_dataset."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ntng_jax.data import (
  BatchIterator,
  SyntheticCorpus,
  Tokenizer,
  build_dataset,
  chunk_token_stream,
  compute_input_and_target_lengths,
  holdout_split,
  mask_for_mlm,
  read_text_lines,
  reconstruct_from_span_corruption,
  span_corruption,
  train_tokenizer,
  unigram_entropy_nats,
)
from ntng_jax.data import tokenizers as tokenizers_mod
from ntng_jax.data.objectives import random_spans_noise_mask

SHAKESPEARE = Path("/work/shared/data/text/tinyshakespeare/train.txt")
SPECIALS = (0, 1, 2, 3, 4, 5, 6)
MASK = 6


@pytest.fixture(scope="module")
def corpus_lines():
  return list(SyntheticCorpus(seed=0).lines(8000))


@pytest.fixture(scope="module")
def bert_tok(corpus_lines, tmp_path_factory):
  return train_tokenizer(corpus_lines, "bert", 1024, cache_dir=tmp_path_factory.mktemp("tok"))


def _cfg(**kw):
  from ml_collections import ConfigDict

  base = dict(
    source="synthetic",
    path="",
    seq_len=64,
    num_lines=4000,
    corpus_seed=0,
    validation_fraction=0.05,
    max_predictions=0,
    noise_density=0.15,
    mean_noise_span_length=3.0,
    tokenizer_dir="",
  )
  base.update(kw)
  return ConfigDict(base)


# ----------------------------------------------------------------------------- MLM
def _mlm_tokens(rng, b=512, s=128, vocab=1000):
  tok = rng.integers(7, vocab, size=(b, s))
  special = rng.random((b, s)) < 0.1
  tok[special] = rng.choice(SPECIALS, size=special.sum())
  return tok


def test_mlm_statistics():
  rng = np.random.default_rng(0)
  tok = _mlm_tokens(rng)
  n_sel = n_mask = n_rand = n_same = 0
  for _ in range(4):
    out = mask_for_mlm(rng, tok, SPECIALS, MASK, 1000)
    pos, lab, w, inp = (out[k] for k in ("mlm_positions", "mlm_labels", "mlm_weights", "input_ids"))
    assert inp.dtype == pos.dtype == lab.dtype == np.int32 and w.dtype == np.float32
    assert pos.shape == (512, 19)
    maskable = ~np.isin(tok, SPECIALS)
    k = np.floor(0.15 * maskable.sum(1) + 0.5)
    np.testing.assert_array_equal(w.sum(1), k)  # exact count per row
    valid = w > 0
    rows = np.nonzero(valid)[0]
    sel = pos[valid]
    assert maskable[rows, sel].all()  # specials never selected
    np.testing.assert_array_equal(lab[valid], tok[rows, sel])
    assert (lab[~valid] == 0).all() and (pos[~valid] == 0).all()
    # Each row's selected positions are distinct and ascending.
    assert all(np.all(np.diff(p[v]) > 0) for p, v in zip(pos, valid))
    changed = np.zeros_like(valid, shape=tok.shape)
    changed[rows, sel] = True
    np.testing.assert_array_equal(inp[~changed], tok[~changed])  # rest untouched
    new = inp[rows, sel]
    n_sel += len(sel)
    n_mask += (new == MASK).sum()
    n_same += (new == tok[rows, sel]).sum()
    rand = (new != MASK) & (new != tok[rows, sel])
    n_rand += rand.sum()
    assert not np.isin(new[rand], SPECIALS).any() and (new < 1000).all()
  assert abs(n_sel / (4 * maskable.sum()) - 0.15) < 0.002
  assert abs(n_mask / n_sel - 0.8) < 0.01
  assert abs(n_rand / n_sel - 0.1) < 0.01
  assert abs(n_same / n_sel - 0.1) < 0.01


def test_mlm_masks_differ_between_calls_and_are_seeded():
  tok = _mlm_tokens(np.random.default_rng(1), b=8)
  rng = np.random.default_rng(5)
  a, b = mask_for_mlm(rng, tok, SPECIALS, MASK, 1000), mask_for_mlm(rng, tok, SPECIALS, MASK, 1000)
  assert not np.array_equal(a["mlm_positions"], b["mlm_positions"])
  c = mask_for_mlm(np.random.default_rng(5), tok, SPECIALS, MASK, 1000)
  for key in a:
    np.testing.assert_array_equal(a[key], c[key])


# ----------------------------------------------------------------------------- T5
def test_span_lengths():
  assert compute_input_and_target_lengths(512, 0.15, 3.0) == (568, 114)
  rng = np.random.default_rng(0)
  raw = rng.integers(3, 32000, size=(16, 568))
  out = span_corruption(rng, raw, 32127 - np.arange(100), eos_id=1, pad_id=0)
  assert out["encoder_input_ids"].shape == (16, 512)
  assert out["targets"].shape == out["decoder_input_ids"].shape == (16, 114)
  assert all(v.dtype == np.int32 for k, v in out.items() if k != "target_weights")
  assert (out["target_weights"] == 1).all()
  assert (out["encoder_input_ids"][:, -1] == 1).all() and (out["targets"][:, -1] == 1).all()
  np.testing.assert_array_equal(out["decoder_input_ids"][:, 0], 0)
  np.testing.assert_array_equal(out["decoder_input_ids"][:, 1:], out["targets"][:, :-1])
  assert (out["targets"][:, 0] == 32127).all()  # targets start with <extra_id_0>


@pytest.mark.parametrize("raw_len,targets_len", [(568, None), (141, 32), (30, None)])
def test_span_corruption_reversible(raw_len, targets_len):
  rng = np.random.default_rng(raw_len)
  sent = 2047 - np.arange(100)
  raw = rng.integers(3, 1900, size=(64, raw_len))
  out = span_corruption(rng, raw, sent, eos_id=1, targets_length=targets_len)
  rec = reconstruct_from_span_corruption(
    out["encoder_input_ids"], out["targets"], sent, 1, out["target_weights"]
  )
  np.testing.assert_array_equal(rec, raw)


def test_span_noise_statistics():
  rng = np.random.default_rng(0)
  mask = random_spans_noise_mask(rng, 2000, 568, 0.15, 3.0)
  assert abs(mask.mean() - 0.15) < 0.002
  assert not mask[:, 0].any()  # a non-noise span comes first
  starts = mask & ~np.pad(mask, ((0, 0), (1, 0)))[:, :-1]
  np.testing.assert_array_equal(starts.sum(1), 28)
  assert abs(mask.sum() / starts.sum() - 3.0) < 0.1
  # Spans are placed all over the sequence.
  assert mask[:, :284].mean() > 0.12 and mask[:, 284:].mean() > 0.12


# ----------------------------------------------------------------------------- synthetic
def test_synthetic_deterministic_and_random_access():
  a, b = SyntheticCorpus(seed=3), SyntheticCorpus(seed=3)
  la = list(a.lines(2100))
  assert la == list(b.lines(2100))
  assert la[1000:1100] == list(a.lines(100, start=1000))  # crosses a block boundary
  assert la != list(SyntheticCorpus(seed=4).lines(2100))
  lengths = [len(s.split()) for s in la]
  assert min(lengths) >= 8 and max(lengths) <= 40 and len(set(lengths)) > 20
  assert all(s == s.lower() and s.replace(" ", "").isalpha() for s in la[:50])


def test_synthetic_entropy_matches_sampled_text():
  c = SyntheticCorpus(seed=0)
  h, h1 = c.entropy_rate_bits_per_word(), c.unigram_entropy_bits_per_word()
  assert h < 0.6 * h1
  index = {w: i for i, w in enumerate(c.words.tolist())}
  pairs, firsts = Counter(), Counter()
  for line in c.lines(30000):
    ids = [index[w] for w in line.split()]
    pairs.update(zip(ids[:-1], ids[1:]))
    firsts.update(ids[:-1])
  n = sum(pairs.values())
  pc = np.array(list(pairs.values())) / n
  pf = np.array(list(firsts.values())) / n
  h_emp = -(pc * np.log2(pc)).sum() + (pf * np.log2(pf)).sum()  # H(X_t | X_{t-1})
  assert abs(h_emp / h - 1) < 0.03, (h_emp, h)


# ----------------------------------------------------------------------------- tokenizer
def test_bert_tokenizer_specials_and_round_trip(bert_tok, corpus_lines):
  tok = bert_tok
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
  assert (tok.cls_id, tok.sep_id, tok.mask_id) == (4, 5, 6)
  assert tok.special_ids == set(SPECIALS) and tok.vocab_size == 1024
  for line in corpus_lines[:50]:
    ids = tok.encode(line)
    assert tok.decode(ids) == line and not set(ids) & tok.special_ids
  assert tok.encode_batch(corpus_lines[:5]) == [tok.encode(s) for s in corpus_lines[:5]]
  assert tok.decode(tok.encode("PI Je")) == "pi je"  # lower-cased


def test_tokenizer_cache_hit_and_save_load(corpus_lines, tmp_path, monkeypatch):
  tok = train_tokenizer(corpus_lines, "t5", 1024, cache_dir=tmp_path)
  assert len(list(tmp_path.iterdir())) == 1

  def no_training(**kw):
    raise AssertionError("cache miss: SentencePiece was trained again")

  monkeypatch.setattr(tokenizers_mod.spm.SentencePieceTrainer, "train", no_training)
  again = train_tokenizer(corpus_lines, "t5", 1024, cache_dir=tmp_path)
  assert again.fingerprint == tok.fingerprint and len(tok.fingerprint) == 16
  tok.save(tmp_path / "saved")
  loaded = Tokenizer.load(tmp_path / "saved")
  assert loaded.fingerprint == tok.fingerprint and loaded.kind == "t5"
  assert json.loads((tmp_path / "saved" / "tokenizer.json").read_text())["kind"] == "t5"
  with pytest.raises(FileNotFoundError):
    Tokenizer.load(tmp_path / "nowhere")


def test_t5_tokenizer_ids(corpus_lines, tmp_path):
  tok = train_tokenizer(corpus_lines, "t5", 1024, cache_dir=tmp_path)
  assert (tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2)
  assert tok.num_sentinels == 1024 // 20
  assert tok.sentinel_id(0) == 1023 and tok.sentinel_id(3) == 1020
  assert tok.num_pieces <= 1024 - tok.num_sentinels
  assert {0, 1, 2, 1023, 974} <= tok.special_ids
  ids = tok.encode(corpus_lines[0])
  assert tok.decode(ids) == corpus_lines[0] and max(ids) < tok.num_pieces
  assert "<extra_id_2>" in tok.decode(ids[:2] + [tok.sentinel_id(2)] + ids[2:4])


# ----------------------------------------------------------------------------- pipeline
def test_chunk_token_stream_and_split():
  chunks = chunk_token_stream([[10, 11], [12], [13, 14, 15]], 4, append_ids=(5,))
  np.testing.assert_array_equal(chunks, [[10, 11, 5, 12], [5, 13, 14, 15]])  # 1 dropped
  assert chunks.dtype == np.int32
  tr, ho = holdout_split(1000, 0.05, seed=0)
  assert len(ho) == 50 and len(tr) == 950 and not set(tr) & set(ho)
  np.testing.assert_array_equal(ho, holdout_split(1000, 0.05, seed=0)[1])
  assert abs(unigram_entropy_nats(np.array([[1, 2], [3, 4]]), 8) - np.log(4)) < 1e-9


def _iterator(chunks, **kw):
  objective = lambda rng, t: mask_for_mlm(rng, t, SPECIALS, MASK, 500)  # noqa: E731
  return BatchIterator(chunks, 16, objective, **kw)


def _same(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


def test_iterator_deterministic_resume_and_processes():
  chunks = np.random.default_rng(0).integers(7, 500, size=(100, 32)).astype(np.int32)
  ids = np.arange(100) * 3 + 1  # stable ids differ from row numbers
  ref = [next(it) for it in [_iterator(chunks, seed=3, example_ids=ids)] for _ in range(14)]
  assert ref[0]["example_id"].dtype == np.int32 and ref[0]["example_id"].shape == (16,)
  other = _iterator(chunks, seed=3, example_ids=ids)
  for r in ref:
    _same(r, next(other))
  # One epoch = 6 batches, each row at most once; epochs reshuffle.
  epoch0 = np.concatenate([b["example_id"] for b in ref[:6]])
  assert len(set(epoch0)) == 96 and set(epoch0) <= set(ids)
  assert not np.array_equal(ref[0]["example_id"], ref[6]["example_id"])
  # Resume mid-epoch and across the epoch boundary.
  for k in (4, 6, 7):
    it = _iterator(chunks, seed=3, example_ids=ids)
    for _ in range(k):
      next(it)
    state = json.loads(json.dumps(it.get_state()))
    fresh = _iterator(chunks, seed=3, example_ids=ids)
    fresh.set_state(state)
    for r in ref[k:]:
      _same(r, next(fresh))
  # Processes, concatenated, equal the global batch (also when slices split RNG blocks).
  for count in (2, 4, 16):
    procs = [
      _iterator(chunks, seed=3, example_ids=ids, process_index=p, process_count=count)
      for p in range(count)
    ]
    for r in ref[:8]:
      parts = [next(p) for p in procs]
      assert len(parts[0]["example_id"]) == 16 // count
      _same(r, {k: np.concatenate([p[k] for p in parts]) for k in r})
  assert not np.array_equal(
    ref[0]["example_id"], next(_iterator(chunks, seed=4, example_ids=ids))["example_id"]
  )


def test_prefetcher_same_batches_and_exact_resume():
  from ntng_jax.data import Prefetcher

  chunks = np.random.default_rng(0).integers(7, 500, size=(100, 32)).astype(np.int32)
  ref = [next(it) for it in [_iterator(chunks, seed=3)] for _ in range(20)]  # 6 per epoch
  pf = Prefetcher(_iterator(chunks, seed=3), depth=5, workers=2)
  for r in ref[:9]:
    _same(r, next(pf))
  state = json.loads(json.dumps(pf.get_state()))
  assert state == {"epoch": 1, "index": 3}  # consumed, not computed ahead
  fresh = Prefetcher(_iterator(chunks, seed=3), depth=3)
  fresh.set_state(state)
  for r in ref[9:]:
    _same(r, next(fresh))
  pf.close()
  fresh.close()


def test_iterator_memmap(tmp_path):
  chunks = np.random.default_rng(0).integers(7, 500, size=(64, 32)).astype(np.int32)
  np.save(tmp_path / "c.npy", chunks)
  mm = np.load(tmp_path / "c.npy", mmap_mode="r")
  _same(next(_iterator(chunks, seed=1)), next(_iterator(mm, seed=1)))


# ----------------------------------------------------------------------------- sources
def test_sources_errors_and_jsonl(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    read_text_lines(tmp_path / "missing.txt")
  (tmp_path / "empty.txt").write_text("\n  \n")
  with pytest.raises(ValueError, match="no text"):
    read_text_lines(tmp_path / "empty.txt")
  (tmp_path / "emptydir").mkdir()
  with pytest.raises(ValueError, match="no text"):
    read_text_lines(tmp_path / "emptydir")
  d = tmp_path / "corpus"
  (d / "sub").mkdir(parents=True)
  (d / "a.txt").write_text("first line\n\nsecond line\n")
  (d / "sub" / "b.jsonl").write_text(json.dumps({"text": "a doc\nwith two lines"}) + "\n")
  (d / "ignored.csv").write_text("x,y\n")
  assert read_text_lines(d) == ["first line", "second line", "a doc\nwith two lines"]
  with pytest.raises(FileNotFoundError):
    build_dataset(_cfg(source="text", path=str(tmp_path / "nope")), "bert", 512, tmp_path)


# ----------------------------------------------------------------------------- build_dataset
@pytest.mark.parametrize("family", ["bert", "t5"])
def test_build_dataset_synthetic(family, tmp_path):
  cfg = _cfg()
  ds = build_dataset(cfg, family, 1024, tmp_path)
  again = build_dataset(cfg, family, 1024, tmp_path)  # tokenizer + chunk caches
  assert again.tokenizer.fingerprint == ds.tokenizer.fingerprint
  np.testing.assert_array_equal(again.train_chunks, ds.train_chunks)
  assert ds.meta["num_train"] + ds.meta["num_validation"] == ds.meta["num_chunks"]
  assert not set(ds.train_ids) & set(ds.validation_ids)
  assert 0 < ds.unigram_entropy_nats < np.log(1024)
  batch = next(ds.train_iterator(16, seed=0))
  assert set(batch["example_id"]) <= set(ds.train_ids.tolist())
  if family == "bert":
    assert ds.train_chunks.shape[1] == 64 and batch["input_ids"].shape == (16, 64)
    assert batch["mlm_positions"].shape == (16, 10)
    assert (ds.train_chunks == ds.tokenizer.sep_id).any()
  else:
    raw, tgt = compute_input_and_target_lengths(64)
    assert ds.train_chunks.shape[1] == raw == ds.meta["chunk_len"]
    assert batch["encoder_input_ids"].shape == (16, 64) and batch["targets"].shape == (16, tgt)
    assert (ds.train_chunks == ds.tokenizer.eos_id).any()
  v1, v2 = ds.validation_batches(16), ds.validation_batches(16)
  assert len(v1) == ds.meta["num_validation"] // 16 > 0
  for a, b in zip(v1, v2):
    _same(a, b)
  assert len(ds.validation_batches(16, max_batches=1)) == 1


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="tinyshakespeare not available")
def test_build_dataset_real_text(tmp_path):
  ds = build_dataset(
    _cfg(source="text", path=str(SHAKESPEARE), seq_len=128), "bert", 2048, tmp_path
  )
  tok = ds.tokenizer
  line = "First Citizen: Before we proceed any further, hear me speak."
  assert tok.decode(tok.encode(line)) == line.lower()
  assert ds.meta["num_chunks"] > 1000 and ds.meta["source"].startswith("text:")
  batch = ds.validation_batches(32, max_batches=1)[0]
  assert batch["input_ids"].shape == (32, 128) and (batch["mlm_weights"].sum(1) > 15).all()


def test_named_validation_sets_in_memory_source(tmp_path):
  from ntng_jax.data import DataError

  val = tmp_path / "val.txt"
  val.write_text("\n".join(SyntheticCorpus(seed=9).lines(400)) + "\n")
  cfg = _cfg(validation={"other": str(val), "heldout": "heldout"})
  ds = build_dataset(cfg, "bert", 1024, tmp_path)
  sets = ds.validation_sets(16, seed=0, max_batches=2)
  assert list(sets) == ["heldout", "other"]
  _same(sets["heldout"][0], ds.validation_batches(16, max_batches=1)[0])
  other = sets["other"]
  assert len(other) == 2 and other[0]["input_ids"].shape == (16, 64)
  np.testing.assert_array_equal(other[0]["example_id"], np.arange(16))
  # Cached under workdir/data_cache and identical (fixed masks) when rebuilt.
  assert list((tmp_path / "data_cache").glob("validation-*.npy"))
  again = build_dataset(cfg, "bert", 1024, tmp_path).validation_sets(16, max_batches=2)
  for a, b in zip(other, again["other"]):
    _same(a, b)
  with pytest.raises(DataError, match="fewer tokens than one chunk"):
    (tmp_path / "tiny.txt").write_text("pa\n")
    build_dataset(
      _cfg(validation={"t": str(tmp_path / "tiny.txt")}), "bert", 1024, None
    ).validation_sets(16)


def test_tokenizer_fingerprint_covers_layout(corpus_lines, tmp_path):
  tok = train_tokenizer(corpus_lines, "t5", 1024, cache_dir=tmp_path)
  wider = Tokenizer(tok.model_proto, "t5", 2048, tok.num_sentinels)
  assert wider.fingerprint != tok.fingerprint and wider.sentinel_id(0) == 2047
  # Directories saved before the fingerprint covered the layout still load.
  meta = json.loads((tmp_path / next(tmp_path.iterdir()).name / "tokenizer.json").read_text())
  legacy = tmp_path / "legacy"
  tok.save(legacy)
  meta["fingerprint"] = tok._legacy_fingerprint
  (legacy / "tokenizer.json").write_text(json.dumps(meta))
  assert Tokenizer.load(legacy).fingerprint == tok.fingerprint


def test_no_heavy_imports():
  code = (
    "import sys, ntng_jax.data; bad = {'tensorflow', 'seqio', 'tensorflow_datasets'}; "
    "sys.exit(any(m.split('.')[0] in bad for m in sys.modules))"
  )
  assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]).returncode == 0
