"""Super-NaturalInstructions data (ntng_jax.eval.sni): the real split, the fallback and
train_tasks.txt splits, Rouge-L both ways, and training targets drawn from the references."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ntng_jax import eval as E

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} is absent")


# ----------------------------------------------------------------------------- SNI


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
