"""Tests for ntng_jax.eval: metrics vs scikit-learn/scipy/rouge-score, the real GLUE /
SuperGLUE / SNI files, error messages, encoding layout, batching, the head, and imports."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ntng_jax import eval as E

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} is absent")


# ----------------------------------------------------------------------------- metrics
def _cases():
  rng = np.random.default_rng(0)
  cases = []
  for k, n in [(2, 50), (2, 7), (3, 40), (3, 200)]:
    cases.append((rng.integers(0, k, n), rng.integers(0, k, n)))
  y = rng.integers(0, 2, 30)
  cases += [
    (y, np.zeros_like(y)),  # constant predictions (MCC undefined -> 0)
    (y, np.ones_like(y)),
    (y, y.copy()),  # perfect
    (y, 1 - y),  # all wrong
    (np.zeros(10, int), np.zeros(10, int)),  # no positives at all (F1 -> 0)
    (np.array([2, 2, 0]), np.array([2, 1, 0])),
  ]
  return cases


@pytest.mark.filterwarnings("ignore:A single label was found")
@pytest.mark.parametrize("case", range(len(_cases())))
def test_classification_metrics_match_sklearn(case):
  sk = pytest.importorskip("sklearn.metrics")
  y, p = _cases()[case]
  assert E.accuracy(y, p) == pytest.approx(sk.accuracy_score(y, p))
  assert E.f1(y, p) == pytest.approx(sk.f1_score(y == 1, p == 1, zero_division=0))
  if set(np.unique(np.r_[y, p])) == {0, 1}:
    assert E.f1(y, p) == pytest.approx(sk.f1_score(y, p, zero_division=0))
  assert E.f1_macro(y, p) == pytest.approx(sk.f1_score(y, p, average="macro", zero_division=0))
  assert E.mcc(y, p) == pytest.approx(sk.matthews_corrcoef(y, p), abs=1e-12)


def test_mcc_constant_predictions_is_zero():
  assert E.mcc([0, 1, 1, 0], [1, 1, 1, 1]) == 0.0
  assert E.mcc([1, 1, 1], [1, 1, 1]) == 0.0


def test_correlations_match_scipy():
  stats = pytest.importorskip("scipy.stats")
  rng = np.random.default_rng(1)
  for y, p in [
    (rng.normal(size=100), rng.normal(size=100)),
    (rng.uniform(0, 5, 60), rng.integers(0, 5, 60).astype(float)),  # ties
    (np.arange(10.0), np.arange(10.0) ** 3),
  ]:
    assert E.pearson(y, p) == pytest.approx(stats.pearsonr(y, p)[0], abs=1e-12)
    assert E.spearman(y, p) == pytest.approx(stats.spearmanr(y, p)[0], abs=1e-12)
  assert np.isnan(E.pearson([1.0, 2.0, 3.0], [2.0, 2.0, 2.0]))
  assert np.isnan(E.spearman([1.0, 2.0, 3.0], [2.0, 2.0, 2.0]))


def test_multirc_scores_match_sklearn():
  sk = pytest.importorskip("sklearn.metrics")
  rng = np.random.default_rng(2)
  groups = [(p, q) for p in range(4) for q in range(3) for _ in range(rng.integers(1, 5))]
  y, p = rng.integers(0, 2, len(groups)), rng.integers(0, 2, len(groups))
  p[:3] = y[:3]
  got = E.multirc_scores(y, p, groups)
  assert got["f1a"] == pytest.approx(sk.f1_score(y, p, zero_division=0))
  qs = sorted(set(groups))
  idx = {g: [i for i, h in enumerate(groups) if h == g] for g in qs}
  assert got["em"] == pytest.approx(np.mean([np.all(y[i] == p[i]) for i in idx.values()]))
  assert got["f1m"] == pytest.approx(
    np.mean([sk.f1_score(y[i], p[i], average="macro", zero_division=0) for i in idx.values()])
  )
  assert E.compute_metrics("multirc", y, p, groups) == got


def test_rouge_l_matches_rouge_score():
  rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
  preds = ["the cats are running quickly", "bleed", "A", "", "completely different words"]
  refs = ["a cat runs quick", "bleeding", "D", "something", "completely different words"]
  scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
  want = 100 * np.mean([scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs)])
  assert E.rouge_l(preds, refs) == pytest.approx(want)
  assert E.rouge_l(["cats running"], [["dogs", "cat runs"]]) == pytest.approx(100.0)


def test_glue_and_superglue_averages():
  full = {
    "qqp": {"f1": 0.8},
    "qnli": {"accuracy": 0.9},
    "mrpc": {"f1": 0.85},
    "mnli": {"accuracy": 0.8},
    "mnli_mm": {"accuracy": 0.81},
    "stsb": {"pearson": 0.85},
    "sst2": {"accuracy": 0.9},
    "rte": {"accuracy": 0.6},
    "cola": {"mcc": 0.4},
  }
  res = E.glue_average(full)
  assert res["missing"] == [] and len(res["components"]) == 9
  assert res["average"] == pytest.approx(np.mean([0.8, 0.9, 0.85, 0.8, 0.81, 0.85, 0.9, 0.6, 0.4]))
  part = E.glue_average({"cola": {"mcc": 0.4, "accuracy": 0.7}, "sst2": {"accuracy": 0.9}})
  assert part["average"] == pytest.approx(0.65)
  assert set(part["missing"]) == {
    "qqp/f1",
    "qnli/accuracy",
    "mrpc/f1",
    "mnli/accuracy",
    "mnli_mm/accuracy",
    "stsb/pearson",
    "rte/accuracy",
  }
  sg = E.superglue_average({"cb": {"f1_macro": 0.7, "accuracy": 0.9}, "copa": {"accuracy": 0.6}})
  assert sg["average"] == pytest.approx(0.65) and "multirc/f1a" in sg["missing"]
  assert np.isnan(E.glue_average({})["average"])


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
def test_sni_tasks():
  split = E.load_sni(DATA / "sni")
  test_list = set(E.read_test_task_names(DATA / "sni" / "splits" / "default" / "test_tasks.txt"))
  assert len(test_list) == 119
  names = {p.stem for p in (DATA / "sni" / "tasks").glob("*.json")}
  assert len(names) == 5
  assert {x["task"] for x in split["test"]} == names & test_list
  assert {x["task"] for x in split["train"]} == names - test_list
  for side in ("train", "test"):
    per_task = Counter(x["task"] for x in split[side])
    assert all(0 < c <= 100 for c in per_task.values())
  for x in split["train"] + split["test"]:
    task = E.read_sni_task(DATA / "sni" / "tasks" / f"{x['task']}.json")
    assert x["source"].startswith("Definition: " + task["Definition"][0].strip())
    for ex in task["Positive Examples"][:2]:
      assert f"Input: {ex['input'].strip()}" in x["source"]
    assert "Positive Example 2 -" in x["source"] and "Positive Example 3" not in x["source"]
    assert "Negative Example" not in x["source"] and "Explanation" not in x["source"]
    assert x["task"] not in x["source"]
    assert x["source"].endswith("\nOutput: ")
    assert x["target"] == x["references"][0]
  # test tasks keep their first 100 instances (file order, as the SNI benchmark)
  t = "task1155_bard_analogical_reasoning_trash_or_treasure"
  inst = E.read_sni_task(DATA / "sni" / "tasks" / f"{t}.json")["Instances"][:100]
  assert [x["references"] for x in split["test"] if x["task"] == t] == [i["output"] for i in inst]


@needs_data
def test_sni_fallback_split_when_no_train_task(tmp_path):
  (tmp_path / "tasks").mkdir()
  (tmp_path / "splits" / "default").mkdir(parents=True)
  name = "task1152_bard_analogical_reasoning_causation"
  shutil.copy(DATA / "sni" / "tasks" / f"{name}.json", tmp_path / "tasks")
  shutil.copy(
    DATA / "sni" / "splits" / "default" / "test_tasks.txt", tmp_path / "splits" / "default"
  )
  split = E.load_sni(tmp_path)
  assert len(split["test"]) == 100 and 0 < len(split["train"]) <= 100
  assert not {x["source"] for x in split["test"]} & {x["source"] for x in split["train"]}
  assert E.load_sni(tmp_path) == split  # deterministic


def _tiny_task(name: str, n: int, outputs_per_instance: int = 1) -> dict:
  return {
    "Definition": [f"Do {name}."],
    "Positive Examples": [{"input": "a", "output": "b", "explanation": ""}],
    "Negative Examples": [],
    "Instances": [
      {
        "id": f"{name}-{i}",
        "input": f"{name} input {i}",
        "output": [f"{name} answer {i} v{j}" for j in range(outputs_per_instance)],
      }
      for i in range(n)
    ],
  }


def _tiny_split_dir(root: Path, train: list[str] | None, test: list[str], files: list[str]) -> Path:
  (root / "tasks").mkdir(parents=True)
  (root / "splits" / "default").mkdir(parents=True)
  for name in files:
    (root / "tasks" / f"{name}.json").write_text(json.dumps(_tiny_task(name, 6)))
  (root / "splits" / "default" / "test_tasks.txt").write_text("\n".join(test) + "\n")
  if train is not None:
    (root / "splits" / "default" / "train_tasks.txt").write_text("\n".join(train) + "\n")
  return root


def test_sni_trains_on_train_tasks_txt_when_present(tmp_path):
  files = ["task1_train", "task2_train", "task3_excluded", "task4_test"]
  with_list = _tiny_split_dir(
    tmp_path / "a", ["task1_train", "task2_train"], ["task4_test", "task9_absent_test"], files
  )
  split = E.load_sni(with_list, max_instances=4)
  assert {x["task"] for x in split["train"]} == {"task1_train", "task2_train"}
  assert {x["task"] for x in split["test"]} == {"task4_test"}
  assert len(split["train"]) == 8 and len(split["test"]) == 4
  rule = E.split_tasks(with_list, files)
  assert rule.rule == "train_tasks.txt" and rule.missing_test == ["task9_absent_test"]
  # Without train_tasks.txt every task file not in test_tasks.txt is trained on, including
  # the one the official split excludes.
  without = _tiny_split_dir(tmp_path / "b", None, ["task4_test"], files)
  split = E.load_sni(without, max_instances=4)
  assert {x["task"] for x in split["train"]} == {"task1_train", "task2_train", "task3_excluded"}
  assert E.split_tasks(without, files).rule == "not in test_tasks.txt"
  # A listed train task without its file, or a task on both lists, is an error.
  missing = _tiny_split_dir(tmp_path / "c", ["task1_train", "task5_nofile"], ["task4_test"], files)
  with pytest.raises(ValueError, match=r"lists 1 task\(s\) with no file .*task5_nofile"):
    E.load_sni(missing)
  both = _tiny_split_dir(tmp_path / "d", ["task1_train", "task4_test"], ["task4_test"], files)
  with pytest.raises(ValueError, match="both list 1 task"):
    E.load_sni(both)


class _WordTokenizer:
  """Whitespace tokenizer with a growing vocabulary (ids 0 pad, 1 EOS, 2 unk)."""

  pad_id, eos_id = 0, 1
  special_ids = {0, 1, 2}

  def __init__(self):
    self.vocab: dict[str, int] = {}

  def encode(self, text):
    return [self.vocab.setdefault(w, len(self.vocab) + 3) for w in text.split()]

  def decode(self, ids):
    words = {i: w for w, i in self.vocab.items()}
    return " ".join(words[i] for i in ids)


def test_sni_rouge_l_both_ways():
  pytest.importorskip("rouge_score")
  tok = _WordTokenizer()
  refs = ["the cat sat", "a dog ran", "birds sing loudly"]
  examples = [{"task": "t", "references": refs}] * 8
  # The prediction is the third reference: SNI's official metric (max over references)
  # gives 100; the paper's code scores against one random reference.
  preds = ["birds sing loudly"] * 8
  scores = E.score_sni(preds, examples, tok, max_target_len=128, seed=0)
  assert scores["rouge_l_official"] == pytest.approx(100.0)
  chosen = scores["paper_references"]
  assert set(chosen) <= set(refs) and len(set(chosen)) > 1  # seeded, varies per example
  assert scores["rouge_l_paper"] == pytest.approx(100.0 * np.mean([c == refs[2] for c in chosen]))
  assert scores["rouge_l_paper"] < 100.0
  assert scores["rouge_l"] == scores["rouge_l_paper"]
  assert E.score_sni(preds, examples, tok, 128, seed=0) == scores  # deterministic
  # One reference longer than the target cap: the paper's code truncated it (9 tokens + EOS),
  # so a prediction of the full text loses recall there, not under the official metric.
  long_ref = " ".join(f"w{i}" for i in range(20))
  one = [{"task": "u", "references": [long_ref]}]
  s = E.score_sni([long_ref], one, tok, max_target_len=10)
  assert s["paper_references"] == [" ".join(f"w{i}" for i in range(9))]
  assert s["rouge_l_official"] == pytest.approx(100.0)
  assert s["rouge_l_paper"] == pytest.approx(100.0 * 2 * 9 / (9 + 20))  # P = 9/20, R = 1
  # A single short reference: the two agree, overall and per task.
  same = E.score_sni(["the cat sat"], [{"task": "v", "references": ["the cat sat down"]}], tok, 128)
  assert same["rouge_l_paper"] == same["rouge_l_official"] == same["tasks"]["v"]["rouge_l"]


def test_sni_training_targets_are_redrawn_from_the_references():
  tok = _WordTokenizer()
  examples = [
    {"source": "s", "target": "a b", "references": ["a b", "c d e f g h i j k"]},
    {"source": "s", "target": "x", "references": ["x"]},
  ]
  rng = np.random.default_rng(0)
  draws = [E.draw_targets(examples, rng) for _ in range(40)]
  assert {d[0] for d in draws} == {"a b", "c d e f g h i j k"}  # both references used
  assert {d[1] for d in draws} == {"x"}
  assert E.draw_targets(examples, np.random.default_rng(0)) == draws[0]  # seeded
  # Target arrays of any draw fit one width (one compiled train step) and equal what
  # encode_seq2seq gives for that target.
  width = E.target_width([r for ex in examples for r in ex["references"]], tok, 128)
  assert width == 16  # 9 tokens + EOS, rounded up to 8
  for d in draws[:3]:
    got = E.encode_targets(d, tok, 128, width)
    want = E.encode_seq2seq(
      [dict(ex, target=t) for ex, t in zip(examples, d)], tok, 8, 128, pad_to_max=False
    )
    n = want["targets"].shape[1]
    assert got["targets"].shape == (2, width)
    for key in ("targets", "decoder_input_ids", "target_weights"):
      np.testing.assert_array_equal(got[key][:, :n], want[key])
      assert not got[key][:, n:].any()
  with pytest.raises(ValueError, match="longer than the requested width"):
    E.encode_targets(["c d e f g h i j k"], tok, 128, width=8)


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


# ----------------------------------------------------------------------------- encoding
class WordTokenizer:
  """Whitespace tokenizer: each new word gets the next id from 10 up."""

  pad_id, eos_id, cls_id, sep_id = 0, 1, 4, 5

  def __init__(self):
    self.vocab = {}

  def encode(self, text):
    return [self.vocab.setdefault(w, 10 + len(self.vocab)) for w in text.split()]


def test_classification_encoding_layout_and_truncation():
  tok = WordTokenizer()
  exs = [
    {"texts": ("a b c", "d e"), "label": 1},
    {"texts": ("a",), "label": 0},
    {"texts": ("p", "c1", "c2", "cause"), "label": 1},
    {
      "texts": (" ".join(f"x{i}" for i in range(300)), " ".join(f"y{i}" for i in range(50))),
      "label": 0,
    },
    {
      "texts": (" ".join(f"x{i}" for i in range(90)), " ".join(f"y{i}" for i in range(90))),
      "label": 0,
    },
  ]
  out = E.encode_classification(exs, tok, max_length=128)
  ids, mask = out["input_ids"], out["attention_mask"]
  assert ids.shape == mask.shape == (5, 128) and ids.dtype == mask.dtype == np.int32
  v = tok.vocab
  assert list(ids[0, :8]) == [4, v["a"], v["b"], v["c"], 5, v["d"], v["e"], 5]
  assert list(ids[1, :3]) == [4, v["a"], 5]
  assert list(ids[2, :9]) == [4, v["p"], 5, v["c1"], 5, v["c2"], 5, v["cause"], 5]
  # longest-first: 300 + 50 -> 75 + 50 (budget 125); 90 + 90 -> 63 + 62 (tie: the later loses)
  row = list(ids[3])
  assert row[0] == 4 and row[-1] == 5 and row.index(5) == 76 and row[77] == v["y0"]
  assert list(ids[4]).index(5) == 64 and ids[4, -1] == 5
  assert mask[3:].all()
  real = np.array([8, 3, 9, 128, 128])
  assert (mask.sum(1) == real).all()
  assert (mask == (np.arange(128)[None] < real[:, None])).all()
  assert (ids[mask == 0] == tok.pad_id).all()
  assert out["labels"].dtype == np.int32 and list(out["labels"]) == [1, 0, 1, 0, 0]
  reg = E.encode_classification([{"texts": ("a",), "label": 3.2}], tok, num_classes=1)
  assert reg["labels"].dtype == np.float32


def test_truncate_longest_first():
  assert [len(s) for s in E.truncate_longest_first([[1] * 10, [2] * 3], 8)] == [5, 3]
  assert [len(s) for s in E.truncate_longest_first([[1] * 5, [2] * 5, [3] * 5], 10)] == [4, 3, 3]
  assert E.truncate_longest_first([[1, 2], [3]], 5) == [[1, 2], [3]]


def test_seq2seq_encoding():
  tok = WordTokenizer()
  exs = [
    {"source": "s1 s2 s3", "target": "t1"},
    {"source": " ".join(["w"] * 50), "target": " ".join(["u"] * 20)},
  ]
  out = E.encode_seq2seq(exs, tok, max_source_length=16, max_target_length=8)
  assert out["encoder_input_ids"].shape == (2, 16) and out["targets"].shape == (2, 8)
  assert list(out["encoder_input_ids"][0, :4]) == [
    tok.vocab["s1"],
    tok.vocab["s2"],
    tok.vocab["s3"],
    tok.eos_id,
  ]
  assert out["encoder_input_ids"][1, -1] == tok.eos_id and out["encoder_mask"][1].all()
  assert list(out["encoder_mask"][0]) == [1] * 4 + [0] * 12
  assert list(out["targets"][0, :3]) == [tok.vocab["t1"], tok.eos_id, 0]
  assert list(out["decoder_input_ids"][0, :3]) == [0, tok.vocab["t1"], tok.eos_id]
  assert (out["decoder_input_ids"][:, 1:] == out["targets"][:, :-1]).all()
  assert out["target_weights"].dtype == np.float32
  assert list(out["target_weights"][0]) == [1, 1, 0, 0, 0, 0, 0, 0]
  short = E.encode_seq2seq(exs[:1], tok, 1024, 128, pad_to_max=False)
  assert short["encoder_input_ids"].shape == (1, 8) and short["targets"].shape == (1, 8)


def test_iterate_batches():
  arrays = {"x": np.arange(10), "y": np.arange(10) * 2}
  batches = list(E.iterate_batches(arrays, 4))
  assert [len(b["x"]) for b in batches] == [4, 4, 2]
  assert list(batches[0]["x"]) == [0, 1, 2, 3]
  shuffled = list(E.iterate_batches(arrays, 4, rng=0, drop_last=True))
  assert len(shuffled) == 2 and all((b["y"] == 2 * b["x"]).all() for b in shuffled)
  assert list(np.concatenate([b["x"] for b in shuffled])) != list(range(8))
  assert [list(b["x"]) for b in E.iterate_batches(arrays, 4, rng=0, drop_last=True)] == [
    list(b["x"]) for b in shuffled
  ]
  padded = list(E.iterate_batches(arrays, 4, pad_last=True))
  assert padded[-1]["x"].shape == (4,) and list(padded[-1]["example_mask"]) == [1, 1, 0, 0]


# ----------------------------------------------------------------------------- head
def test_classification_head_and_loss():
  import jax
  import jax.numpy as jnp
  import optax

  head = E.ClassificationHead(num_classes=3)
  h = jax.random.normal(jax.random.PRNGKey(0), (4, 7, 64))
  params = head.init(jax.random.PRNGKey(1), h)
  assert params["params"]["pooler"]["kernel"].shape == (64, 1024)
  assert float(jnp.std(params["params"]["pooler"]["kernel"])) == pytest.approx(0.02, rel=0.05)
  assert not params["params"]["classifier"]["bias"].any()
  logits = head.apply(params, h)
  assert logits.shape == (4, 3) and logits.dtype == jnp.float32
  # only the first token matters
  assert jnp.allclose(head.apply(params, h.at[:, 1:].set(0.0)), logits)
  dropped = head.apply(params, h, deterministic=False, rngs={"dropout": jax.random.PRNGKey(2)})
  assert not jnp.allclose(dropped, logits)
  labels = jnp.array([0, 2, 1, 1])
  want = optax.softmax_cross_entropy(logits, jax.nn.one_hot(labels, 3)).mean()
  assert E.classification_loss(logits, labels, 3) == pytest.approx(float(want), rel=1e-6)
  w = jnp.array([1.0, 1.0, 0.0, 0.0])
  assert E.classification_loss(logits, labels, 3, w) == pytest.approx(
    float(optax.softmax_cross_entropy(logits[:2], jax.nn.one_hot(labels[:2], 3)).mean()), rel=1e-6
  )
  reg = E.ClassificationHead(num_classes=1)
  rp = reg.init(jax.random.PRNGKey(3), h)
  out = reg.apply(rp, h)
  y = jnp.array([1.0, 2.0, 3.0, 4.0])
  assert out.shape == (4, 1)
  assert E.classification_loss(out, y, 1) == pytest.approx(float(jnp.mean((out[:, 0] - y) ** 2)))
  assert E.predictions_from_logits(logits, 3).shape == (4,)


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
