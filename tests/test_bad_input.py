"""Bad input ends in one sentence naming the cause and the fix, never a traceback or a silent
fallback: config fields, corpora, shards, RST and IL tables, sweeps, workdirs, budgets.

Most cases call the library in-process (the error type and sentence are the contract); a few run
the entry points, where the exit code and the absence of a traceback are the point."""

import json
import os
import re
import sys

import numpy as np
import pytest
from conftest import REPO, fixed_table, run_module, tiny_config

import configs
from ntng_jax import config as config_lib
from ntng_jax import rst
from ntng_jax.data.errors import DataError


def one_sentence(proc, phrase) -> str:
  """The error line of a failed entry point: exit code 2, no traceback, `phrase` (or one of a
  tuple of phrases) in it."""
  assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
  assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  phrases = (phrase,) if isinstance(phrase, str) else phrase
  assert len(lines) == 1 and any(p in lines[0] for p in phrases), proc.stderr[-2000:]
  return lines[0]


# ----------------------------------------------------------------------------- config fields
def test_unknown_config_field_names_the_nearest_valid_one(tmp_path):
  """From another working directory, so the default config must be found through the package."""
  proc = run_module(
    "launch.pretrain",
    f"--workdir={tmp_path}/w",
    "--config.train.budget_hour=0.003",
    check=False,
    cwd=tmp_path,
  )
  line = one_sentence(proc, "no field budget_hour")
  assert "did you mean --config.train.budget_hours?" in line
  config = tiny_config("t5")
  with pytest.raises(config_lib.ConfigError, match="did you mean --config.train"):
    config_lib.check_overrides(config, ["--config.trian.budget_hours=1"])
  with pytest.raises(config_lib.ConfigError, match="fields of config.rst are"):
    config_lib.check_overrides(config, ["--config.rst.xyzzy=1"])
  with pytest.raises(config_lib.ConfigError, match="config.seed is a value"):
    config_lib.check_overrides(config, ["--config.seed.x=1"])
  config_lib.check_overrides(
    config,
    [
      "--config.train.budget_hours=1",
      "--config.model.noremat",
      "--workdir=x",
      "--config=configs/t5.py",
    ],
  )


def test_configs_resolve_relative_to_the_package(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  path = configs.resolve_config_path("configs/t5.py")
  assert os.path.isabs(path) and path == str(REPO / "configs" / "t5.py")
  assert configs.resolve_config_path("nope.py") == "nope.py"
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "t5.py").write_text("# a local config wins")
  assert configs.resolve_config_path("configs/t5.py") == "configs/t5.py"


@pytest.mark.parametrize(
  "field, value, phrase",
  [
    ("train.max_steps", -5, "train.max_steps must be 0 (no limit) or a positive"),
    ("train.keep_checkpoints", 0, "train.keep_checkpoints must be at least 1"),
    ("train.keep_checkpoints", -1, "train.keep_checkpoints must be at least 1"),
  ],
)
def test_negative_counts_are_config_errors(field, value, phrase):
  with pytest.raises(config_lib.ConfigError, match=re.escape(phrase)):
    config_lib.validate(tiny_config("bert", **{field: value}))


def test_negative_max_steps_from_another_directory(tmp_path):
  """Before: 0 steps, exit 0 and NaN in summary.json; and no config found outside the repo."""
  proc = run_module(
    "launch.pretrain",
    f"--workdir={tmp_path}/w",
    "--config=configs/t5.py",
    "--config.train.max_steps=-5",
    check=False,
    cwd=tmp_path,
    timeout=300,
  )
  one_sentence(proc, "train.max_steps must be 0")
  assert not (tmp_path / "w" / "summary.json").exists()


def test_budget_that_buys_no_step_is_a_start_up_error(tmp_path):
  from ntng_jax.train import loop

  config = tiny_config("bert", **{"data.num_lines": 500, "train.budget_hours": 1e-4})
  config.rst.table = fixed_table(config, tmp_path / "t.json", step_seconds=1.0)  # 0.36 s budget
  with pytest.raises(config_lib.ConfigError, match=r"buys no step.*at least 0\.000278"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "summary.json").exists()


# ----------------------------------------------------------------------------- workdirs
def test_workdir_problems_are_one_sentence(tmp_path, monkeypatch):
  afile = tmp_path / "afile"
  afile.write_text("x")
  cases = [
    (str(afile), "is a file, not a directory"),
    (str(afile / "run"), "lies under"),
    (str(tmp_path / ("x" * 300) / "run"), "over the 255-byte limit"),
  ]
  for path, phrase in cases:
    with pytest.raises(config_lib.ConfigError, match=phrase):
      config_lib.check_workdir(path)
  config_lib.check_workdir(str(tmp_path / "new" / "run"))  # a new directory is fine
  import errno

  err = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "ro" / "config.json"))
  assert "permission denied for" in config_lib.workdir_problem(str(tmp_path / "ro"), err)
  err = OSError(errno.EROFS, "Read-only file system", str(tmp_path / "ro"))
  assert "read-only file system" in config_lib.workdir_problem(str(tmp_path / "ro"), err)
  err = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "ro" / "x"))
  assert "no space left" in config_lib.workdir_problem(str(tmp_path / "ro"), err)
  monkeypatch.setattr(os, "access", lambda *a, **k: False)  # a directory we may not write to
  with pytest.raises(config_lib.ConfigError, match="cannot write to"):
    config_lib.check_workdir(str(tmp_path / "ro"))


def test_workdir_that_is_a_file_ends_pretrain_in_one_sentence(tmp_path):
  (tmp_path / "w").write_text("not a directory")
  proc = run_module(
    "launch.pretrain", f"--workdir={tmp_path / 'w' / 'run'}", check=False, timeout=300
  )
  one_sentence(proc, ("lies under", "Not a directory"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_workdir_ends_pretrain_in_one_sentence(tmp_path):
  ro = tmp_path / "ro"
  ro.mkdir()
  ro.chmod(0o555)
  proc = run_module("launch.pretrain", f"--workdir={ro}", check=False, timeout=300)
  one_sentence(proc, ("cannot write to", "cannot create", "permission denied"))


# ----------------------------------------------------------------------------- RST tables
def _write(path, text):
  path.write_text(text)
  return str(path)


def test_malformed_rst_tables_name_the_file_and_field(tmp_path):
  config = tiny_config("bert")
  good = fixed_table(config, tmp_path / "good.json", 1.0)
  text = open(good).read()
  raw = json.loads(text)
  cases = {
    "truncated": (text[: len(text) // 2], r"truncated\.json.*not valid JSON"),
    "missing": (
      json.dumps({k: v for k, v in raw.items() if k != "train"}),
      r"missing\.json.*no field 'train'",
    ),
    "nonnumeric": (
      json.dumps({**raw, "train": {**raw["train"], "2": "fast"}}),
      r"nonnumeric\.json.*train\['2'\] is 'fast', not a number",
    ),
    "zero": (
      json.dumps({**raw, "train": {**raw["train"], "1": 0.0}}),
      r"zero\.json.*train\['1'\] is 0\.0; every cost must be positive",
    ),
    "negative": (
      json.dumps({**raw, "forward": {"1": -0.1}}),
      r"negative\.json.*forward\['1'\] is -0\.1",
    ),
    "list": ("[1, 2]", r"list\.json.*not an object"),
    "units": (json.dumps({**raw, "unit_sequences": 0}), "unit_sequences"),
    "layers": (json.dumps({**raw, "train": {"two": 1.0}}), "not indexed by a layer count"),
  }
  for name, (content, phrase) in cases.items():
    path = _write(tmp_path / f"{name}.json", content)
    with pytest.raises(rst.RSTTableError, match=phrase):
      rst.load_table(path, config)
  with pytest.raises(rst.RSTTableError, match="cannot be read"):
    rst.load_table(str(tmp_path), config)  # a directory


def test_zero_cost_table_ends_pretrain_in_one_sentence(tmp_path):
  """Before: a run at learning rate 0 that never ends and never checkpoints."""
  config = tiny_config("bert")
  raw = json.loads(open(fixed_table(config, tmp_path / "t.json", 1.0)).read())
  raw["train"] = {k: 0.0 for k in raw["train"]}
  path = _write(tmp_path / "zero.json", json.dumps(raw))
  proc = run_module(
    "launch.pretrain",
    f"--workdir={tmp_path}/w",
    f"--config.rst.table={path}",
    "--config.data.num_lines=500",
    check=False,
    timeout=300,
  )
  one_sentence(proc, "every cost must be positive")


# ----------------------------------------------------------------------------- corpora
def test_corpus_that_is_not_utf8_is_refused(tmp_path):
  """Before: Latin-1 text silently became U+FFFD; random bytes reached SentencePiece."""
  from ntng_jax.data.sources import read_text_lines

  latin = tmp_path / "latin1.txt"
  latin.write_bytes("un café au lait\nnaïve\n".encode("latin-1"))
  with pytest.raises(
    DataError,
    match=r"latin1\.txt' is not UTF-8 text \(byte 0xe9 at offset 6,"
    r" line 1\); convert it",
  ):
    read_text_lines(latin)
  rand = tmp_path / "random.txt"
  rand.write_bytes(b"ok line\n" + np.random.default_rng(0).bytes(4000))
  with pytest.raises(DataError, match=r"random\.txt' is not UTF-8 text"):
    read_text_lines(rand)
  jsonl = tmp_path / "docs.jsonl"
  jsonl.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
  with pytest.raises(DataError, match=r"docs\.jsonl' is not UTF-8 text .* line 2\)"):
    read_text_lines(jsonl)
  bom = tmp_path / "bom.txt"
  bom.write_bytes("\ufeffhello world\n".encode("utf-8"))
  assert read_text_lines(bom) == ["hello world"]


def test_not_utf8_corpus_ends_prepare_data_in_one_sentence(tmp_path):
  latin = tmp_path / "latin1.txt"
  latin.write_bytes(("un café au lait\n" * 50).encode("latin-1"))
  proc = run_module(
    "launch.prepare_data",
    "--model=bert",
    f"--input={latin}",
    f"--output={tmp_path / 'out'}",
    check=False,
  )
  one_sentence(proc, "is not UTF-8 text")


def test_corpus_sentencepiece_cannot_train_on(tmp_path):
  """Before: a SentencePiece RuntimeError traceback (3,000 distinct CJK characters, 2,048 ids)."""
  from ntng_jax.data.tokenizers import train_tokenizer

  rng = np.random.default_rng(0)
  chars = [chr(0x4E00 + i) for i in range(3000)]
  lines = ["".join(rng.choice(chars, 60)) for _ in range(1500)]
  with pytest.raises(
    DataError,
    match=r"SentencePiece cannot train a bert tokenizer of 2048 ids.*"
    r"distinct characters.*raise the vocabulary size",
  ):
    train_tokenizer(lines, "bert", 2048)


# ----------------------------------------------------------------------------- shards
@pytest.fixture()
def shards(tmp_path):
  from ntng_jax.data.shard_writer import prepare_shards

  corpus = tmp_path / "corpus.txt"
  rng = np.random.default_rng(0)
  words = [f"w{i}" for i in range(300)]
  corpus.write_text("\n".join(" ".join(rng.choice(words, 40)) for _ in range(400)) + "\n")
  out = tmp_path / "shards"
  prepare_shards(str(corpus), out, "bert", vocab_size=512, seq_len=32, shard_mb=0.02)
  return out


def test_shards_carry_sizes_and_checksums(shards):
  from ntng_jax.data.shards import open_shards, verify_shards

  m = json.loads((shards / "manifest.json").read_text())
  assert len(m["shards"]) >= 2
  for s in m["shards"]:
    assert s["bytes"] == (shards / s["file"]).stat().st_size and len(s["sha256"]) == 64
  assert verify_shards(shards)["num_chunks"] == m["num_chunks"]
  # Truncated: caught whenever the shards are opened (cheap size check).
  last = shards / m["shards"][-1]["file"]
  data = last.read_bytes()
  last.write_bytes(data[:-10])
  with pytest.raises(DataError, match=r"has \d+ bytes but the manifest says \d+"):
    open_shards(shards)
  # Overwritten in place: the header and size still match; reading the damaged rows stops with
  # the file's name (token ids beyond the vocabulary), and the verify command names it too.
  damaged = bytearray(data)
  damaged[-64:] = b"\xff" * 64
  last.write_bytes(bytes(damaged))
  _, _, chunks = open_shards(shards)
  chunks[0:2]  # intact rows read fine
  with pytest.raises(
    DataError,
    match=r"holds token id 65535 .* outside the tokenizer's 512 ids"
    r".*--verify",
  ):
    chunks[np.arange(len(chunks))]
  with pytest.raises(DataError, match=r"does not match the checksum in the manifest"):
    verify_shards(shards)


def test_verify_command(shards):
  ok = run_module("launch.prepare_data", f"--verify={shards}")
  assert "match their manifest" in ok.stdout
  m = json.loads((shards / "manifest.json").read_text())
  first = shards / m["shards"][0]["file"]
  data = bytearray(first.read_bytes())
  data[-1] ^= 0x01  # one flipped bit in a token id: only the checksum sees it
  first.write_bytes(bytes(data))
  one_sentence(
    run_module("launch.prepare_data", f"--verify={shards}", check=False),
    "does not match the checksum",
  )


def test_nonfinite_loss_hint_suspects_shards_early():
  from ntng_jax.data.shards import nonfinite_loss_hint

  config = tiny_config("bert", **{"data.source": "shards", "data.path": "/data/s"})
  assert "--verify=/data/s" in nonfinite_loss_hint(config.data, step=1)
  assert nonfinite_loss_hint(config.data, step=5000) == ""
  assert nonfinite_loss_hint(tiny_config("bert").data, step=1) == ""


# ----------------------------------------------------------------------------- IL tables
def test_truncated_il_table_is_one_sentence(tmp_path):
  from ntng_jax.methods import il_table

  npy, js = il_table.write_il_table(
    str(tmp_path / "il"), np.arange(100, dtype=np.float32), dict(signature={})
  )
  data = open(npy, "rb").read()
  open(npy, "wb").write(data[: len(data) // 2])
  with pytest.raises(
    ValueError,
    match=r"il_losses\.npy is truncated or not a \.npy array.*"
    r"launch\.extract_il",
  ):
    il_table.read_il_table(str(tmp_path / "il"))
  open(npy, "wb").write(data)
  open(js, "w").write('{"format": ')
  with pytest.raises(ValueError, match=r"il_losses\.json is unreadable or not valid JSON"):
    il_table.read_il_table(str(tmp_path / "il"))


# ----------------------------------------------------------------------------- sweeps
def test_sweep_validates_every_method_before_starting(tmp_path):
  root = tmp_path / "sweep"
  proc = run_module(
    "launch.sweep",
    "--config=configs/bert.py:size=tiny",
    "--methods=baseline,foo",
    f"--root={root}",
    check=False,
    cwd=tmp_path,
  )
  one_sentence(proc, "unknown method(s) foo (nothing was started)")
  assert not root.exists()
  proc = run_module(
    "launch.sweep",
    "--config=configs/nope.py:size=tiny",
    "--methods=baseline",
    f"--root={root}",
    check=False,
  )
  one_sentence(proc, "config file 'configs/nope.py' does not exist")


if __name__ == "__main__":
  sys.exit(pytest.main([__file__, "-q"]))
