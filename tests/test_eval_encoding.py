"""Downstream encoding (ntng_jax.eval.encoding): sequence layout and truncation, seq2seq
targets, batching, and the classification head and loss."""

from __future__ import annotations

import numpy as np
import pytest

from ntng_jax import eval as E


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
