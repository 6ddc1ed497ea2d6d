"""Shards from real and foreign inputs: an existing SentencePiece model, real text with named
validation sets, the launch.prepare_data command line, and pre-training from shards end to end."""

import json
import subprocess
import sys

import numpy as np
import pytest
import sentencepiece as spm
from shards_helpers import REPO, TEXT, needs_text, write_corpus
from shards_helpers import one_sentence as _one_sentence
from shards_helpers import same_batches as _same
from shards_helpers import shards_cfg as _cfg

from ntng_jax.data import DataError, Tokenizer, build_dataset, compute_input_and_target_lengths
from ntng_jax.data.shard_writer import prepare_shards


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return write_corpus(tmp_path_factory.mktemp("corpus"))


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
