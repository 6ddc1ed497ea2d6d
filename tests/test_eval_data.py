"""GLUE and SuperGLUE data (ntng_jax.eval): the task registry, the real files, the official
formats, one-sentence errors for malformed files, tfds, and imports free of TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ntng_jax import eval as E
from ntng_jax.errors import UserError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} is absent")


# ----------------------------------------------------------------------------- registry
def test_registry_and_errors():
  assert E.get_task("SST-2").tfds_name == "glue/sst2"
  assert E.get_task("sts-b").num_classes == 1
  assert E.get_task("super_glue/wsc.fixed").tfds_name == "super_glue/wsc.fixed"
  assert E.get_task("rte", suite="superglue").key == "superglue/rte"
  assert E.get_task("cb").selection_metric == "f1_macro"
  assert len(E.task_names()) == 16
  with pytest.raises(ValueError) as e:
    E.get_task("colaa")
  msg = str(e.value)
  assert "\n" not in msg and msg.endswith(".") and "glue/cola" in msg and "superglue/wsc" in msg
  with pytest.raises(ValueError, match="ambiguous"):
    E.get_task("rte")


# ----------------------------------------------------------------------------- real data
GLUE_COUNTS = {  # task: (train, dev, train label counts, dev label counts)
  "cola": (8551, 1043, {1: 6023, 0: 2528}, {1: 721, 0: 322}),
  "sst2": (67349, 872, None, {1: 444, 0: 428}),
  "mrpc": (3668, 408, {1: 2474, 0: 1194}, {1: 279, 0: 129}),
  "stsb": (5749, 1500, None, None),
  "rte": (2490, 277, {0: 1249, 1: 1241}, {0: 146, 1: 131}),
  "wnli": (635, 71, {0: 323, 1: 312}, {0: 40, 1: 31}),
}


@needs_data
@pytest.mark.parametrize("task", sorted(GLUE_COUNTS))
def test_local_glue_counts(task):
  n_train, n_dev, c_train, c_dev = GLUE_COUNTS[task]
  spec = E.get_task(task, "glue")
  for split, n, counts in [("train", n_train, c_train), ("dev", n_dev, c_dev)]:
    ex = E.read_glue(spec, split, DATA / "glue")
    assert len(ex) == n
    assert all(len(x["texts"]) == len(spec.text_fields) for x in ex)
    assert all(isinstance(t, str) and t for x in ex for t in x["texts"])
    if counts is not None:
      assert dict(Counter(x["label"] for x in ex)) == counts
    if spec.is_regression:
      labels = np.array([x["label"] for x in ex])
      assert labels.dtype == np.float64 and labels.min() >= 0 and labels.max() <= 5
  if task == "mrpc":  # BOM header stripped; first row's texts
    assert ex[0]["texts"][0].startswith("He said the foodservice pie business")


@needs_data
def test_local_superglue_counts_and_rte_matches_glue():
  for task, (n_train, n_dev) in {"cb": (250, 56), "copa": (400, 100), "rte": (2490, 277)}.items():
    train = E.read_superglue(task, "train", DATA / "superglue")
    dev = E.read_superglue(task, "dev", DATA / "superglue")
    assert (len(train), len(dev)) == (n_train, n_dev)
    assert [x["idx"] for x in dev] == list(range(n_dev))
  copa = E.read_superglue("copa", "dev", DATA / "superglue")
  assert len(copa[0]["texts"]) == 4 and copa[0]["texts"][3] in ("cause", "effect")
  assert set(Counter(x["label"] for x in E.read_superglue("cb", "dev", DATA / "superglue"))) == {
    0,
    1,
    2,
  }
  g = E.read_glue("rte", "dev", DATA / "glue")
  s = E.read_superglue("rte", "dev", DATA / "superglue")
  assert [x["label"] for x in g] == [x["label"] for x in s]
  # the two copies differ in a few quote/whitespace characters (6 of 277 rows)
  assert sum(a["texts"] == b["texts"] for a, b in zip(g, s)) >= 270


@needs_data
def test_load_examples_dispatches_by_suite_and_source(tmp_path):
  assert E.load_examples("glue/rte", "dev", DATA / "glue") == E.read_glue(
    "rte", "dev", DATA / "glue"
  )
  cb = E.load_examples("cb", "dev", DATA / "superglue")
  assert cb == E.read_superglue("cb", "dev", DATA / "superglue")
  with pytest.raises(ValueError, match="Unknown source 'hub'"):
    E.load_examples("cola", "dev", DATA / "glue", source="hub")
  with pytest.raises(ValueError, match="needs data_dir"):
    E.load_examples("cola", "dev")
  with pytest.raises(ValueError, match="no local split 'test'.*train, dev"):
    E.load_examples("cb", "test", tmp_path)
  # Every bad name, split, directory or file is a user error (one sentence, exit code 2).
  with pytest.raises(UserError, match="Unknown task 'nosuch'"):
    E.load_examples("nosuch", "dev", tmp_path)
  (tmp_path / "CB").mkdir()
  (tmp_path / "CB" / "val.jsonl").write_text("{not json\n")
  with pytest.raises(UserError, match="val.jsonl, line 1: malformed superglue/cb record"):
    E.load_examples("cb", "dev", tmp_path)


# ----------------------------------------------------------------------------- other formats
def _write_jsonl(path: Path, records):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def test_official_superglue_formats(tmp_path):
  _write_jsonl(
    tmp_path / "BOOLQ" / "val.jsonl",
    [
      {"question": "is it?", "passage": "It is.", "idx": 0, "label": True},
      {"question": "is it not?", "passage": "It is.", "idx": 1, "label": False},
    ],
  )
  _write_jsonl(
    tmp_path / "WIC" / "val.jsonl",
    [
      {
        "word": "bank",
        "sentence1": "river bank",
        "sentence2": "bank account",
        "idx": 0,
        "label": False,
        "start1": 6,
        "start2": 0,
        "end1": 10,
        "end2": 4,
        "version": 1.1,
      }
    ],
  )
  _write_jsonl(
    tmp_path / "WSC" / "val.jsonl",
    [
      {
        "text": "Mark told Pete he was late.",
        "idx": 0,
        "label": True,
        "target": {"span1_text": "Mark", "span2_text": "he", "span1_index": 0, "span2_index": 3},
      }
    ],
  )
  _write_jsonl(
    tmp_path / "MULTIRC" / "val.jsonl",
    [
      {
        "idx": 7,
        "version": 1.1,
        "passage": {
          "text": "P.",
          "questions": [
            {
              "question": "Q0?",
              "idx": 0,
              "answers": [{"text": "a", "idx": 0, "label": 1}, {"text": "b", "idx": 1, "label": 0}],
            },
            {"question": "Q1?", "idx": 1, "answers": [{"text": "c", "idx": 2, "label": 0}]},
          ],
        },
      }
    ],
  )
  boolq = E.read_superglue("boolq", "dev", tmp_path)
  assert [(x["texts"], x["label"]) for x in boolq] == [
    (("is it?", "It is."), 1),
    (("is it not?", "It is."), 0),
  ]
  assert E.read_superglue("wic", "dev", tmp_path)[0]["texts"] == (
    "river bank",
    "bank account",
    "bank",
  )
  assert E.read_superglue("wsc", "dev", tmp_path)[0]["texts"] == (
    "Mark told Pete he was late.",
    "Mark",
    "he",
  )
  m = E.read_superglue("multirc", "dev", tmp_path)
  assert [(x["texts"], x["label"], x["idx"], x["group"]) for x in m] == [
    (("P.", "Q0?", "a"), 1, 0, (7, 0)),
    (("P.", "Q0?", "b"), 0, 1, (7, 0)),
    (("P.", "Q1?", "c"), 0, 2, (7, 1)),
  ]


def test_glue_tsv_with_named_columns(tmp_path):
  mnli = tmp_path / "MNLI"
  mnli.mkdir()
  header = [
    "index",
    "promptID",
    "pairID",
    "genre",
    "sentence1_binary_parse",
    "sentence2_binary_parse",
    "sentence1_parse",
    "sentence2_parse",
    "sentence1",
    "sentence2",
    "label1",
    "gold_label",
  ]
  rows = [
    ["0", "1", "1e", "gov", "(", "(", "(", "(", "A man.", "A person.", "entailment", "entailment"],
    [
      "1",
      "2",
      "2c",
      "gov",
      "(",
      "(",
      "(",
      "(",
      "A dog.",
      "A cat.",
      "contradiction",
      "contradiction",
    ],
  ]
  (mnli / "train.tsv").write_text("\n".join("\t".join(r) for r in [header] + rows) + "\n")
  ex = E.read_glue("mnli", "train", tmp_path)
  assert [(x["texts"], x["label"]) for x in ex] == [
    (("A man.", "A person."), 0),
    (("A dog.", "A cat."), 2),
  ]


# ----------------------------------------------------------------------------- malformed files
def _one_sentence(msg: str, path: Path, line: int):
  assert "\n" not in msg and msg.endswith(".")
  assert str(path) in msg and f"line {line}" in msg


def test_malformed_glue_files(tmp_path):
  d = tmp_path / "RTE"
  d.mkdir()
  p = d / "dev.tsv"
  p.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\n")
  with pytest.raises(ValueError) as e:
    E.read_glue("rte", "dev", tmp_path)
  _one_sentence(str(e.value), p, 3)
  assert "expected 4" in str(e.value)
  p.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
  with pytest.raises(ValueError) as e:
    E.read_glue("rte", "dev", tmp_path)
  _one_sentence(str(e.value), p, 2)
  c = tmp_path / "CoLA"
  c.mkdir()
  (c / "train.tsv").write_text("gj04\t1\t\tGood.\ngj04\t7\t*\tBad.\n")
  with pytest.raises(ValueError) as e:
    E.read_glue("cola", "train", tmp_path)
  _one_sentence(str(e.value), c / "train.tsv", 2)
  s = tmp_path / "STS-B"
  s.mkdir()
  (s / "dev.tsv").write_text(
    "\t".join(
      [
        "index",
        "genre",
        "filename",
        "year",
        "old_index",
        "source1",
        "source2",
        "sentence1",
        "sentence2",
        "score",
      ]
    )
    + "\n"
    + "\t".join("0 g f y o s s A B x".split())
    + "\n"
  )
  with pytest.raises(ValueError) as e:
    E.read_glue("stsb", "dev", tmp_path)
  _one_sentence(str(e.value), s / "dev.tsv", 2)


def test_malformed_superglue_files(tmp_path):
  p = tmp_path / "CB" / "val.jsonl"
  p.parent.mkdir()
  good = json.dumps({"premise": "a", "hypothesis": "b", "label": "neutral", "idx": 0})
  for body, line in [
    (good + "\n{not json\n", 2),
    (good + "\n" + json.dumps({"premise": "a", "label": "neutral"}) + "\n", 2),
    (json.dumps({"premise": "a", "hypothesis": "b", "label": "maybe"}), 1),
  ]:
    p.write_text(body)
    with pytest.raises(ValueError) as e:
      E.read_superglue("cb", "dev", tmp_path)
    _one_sentence(str(e.value), p, line)


# ----------------------------------------------------------------------------- tfds, imports
def test_tfds_reader_with_mock_data():
  pytest.importorskip("tensorflow")
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=6):
    cola = E.read_tfds("cola", "train")
    cb = E.read_tfds("cb", "dev")
    multirc = E.read_tfds("multirc", "dev")
  assert len(cola) == 6 and all(len(x["texts"]) == 1 for x in cola)
  assert all(isinstance(x["texts"][0], str) for x in cola)
  assert len(cb) == 6 and all(len(x["texts"]) == 2 and x["label"] in (0, 1, 2) for x in cb)
  assert all(len(x["texts"]) == 3 and len(x["group"]) == 2 for x in multirc)


def test_import_pulls_in_no_tensorflow():
  code = (
    "import sys, ntng_jax.eval; "
    "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
    "('tensorflow', 'seqio', 'tensorflow_datasets')); print(bad); assert not bad"
  )
  res = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    cwd=Path(__file__).resolve().parents[1],
  )
  assert res.returncode == 0, res.stdout + res.stderr
