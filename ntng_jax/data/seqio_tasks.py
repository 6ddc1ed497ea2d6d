"""seqio Tasks for BERT masked LM and T5 span corruption (needs seqio + TensorFlow; imported
only on use). Importing registers ``ntng_t5_span_corruption_c4`` (C4 from TFDS, tokenizer
``$NTNG_T5_TOKENIZER`` or the public T5 vocabulary), ``ntng_bert_mlm_c4`` (when
``$NTNG_BERT_TOKENIZER`` is set) and text tasks for every ``<name>/train.txt`` under
``$NTNG_TEXT_DATA_DIR``. The pipeline is ``ntng_jax.data``'s in tf.data, with the same numpy
objective; features and details: docs/data.md.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import seqio
import tensorflow as tf

from ntng_jax.data.objectives import (
  compute_input_and_target_lengths,
  default_max_predictions,
  mask_for_mlm,
  span_corruption,
)
from ntng_jax.data.tokenizers import Tokenizer

T5_DEFAULT_SPM = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
C4_TFDS_NAME = "c4/en:3.1.0"
_SHARED_TEXT = Path(__file__).resolve().parents[3] / "shared" / "data" / "text"


# ----------------------------------------------------------------------------- tokenizers
class _LazyTokenizer:
  """Our :class:`Tokenizer` for a directory or a ``.model`` path (local or gs://), loaded on
  first use (so registering tasks touches no file)."""

  def __init__(self, path: str, kind: str):
    self.path, self.kind, self._tok = str(path), kind, None

  @property
  def model_file(self) -> str:
    return os.path.join(self.path, "spm.model") if tf.io.gfile.isdir(self.path) else self.path

  def get(self) -> Tokenizer:
    if self._tok is None:
      if tf.io.gfile.isdir(self.path):
        if not self.path.startswith("gs://"):
          self._tok = Tokenizer.load(self.path)
        else:
          raise ValueError(f"Use a .model file for gs:// tokenizers, not {self.path}.")
      else:
        with tf.io.gfile.GFile(self.path, "rb") as f:
          self._tok = Tokenizer.from_sentencepiece(f.read(), self.kind)
      if self._tok.kind != self.kind:
        raise ValueError(f"Tokenizer {self.path} is for {self._tok.kind}, not {self.kind}.")
    return self._tok

  def vocabulary(self) -> seqio.SentencePieceVocabulary:
    # Only used for text -> ids (identical SentencePiece model); sentinel and special ids
    # come from our Tokenizer, so seqio's own extra-id layout does not matter.
    return seqio.SentencePieceVocabulary(self.model_file, extra_ids=0)


# ----------------------------------------------------------------------------- preprocessors
def _to_targets(dataset: tf.data.Dataset, text_key: str = "text") -> tf.data.Dataset:
  """Lines or feature dicts -> ``{'targets': stripped text}``, empty documents dropped."""

  def fn(x):
    text = x[text_key] if isinstance(x, dict) else x
    return {"targets": tf.strings.strip(text)}

  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE).filter(
    lambda ex: tf.strings.length(ex["targets"]) > 0
  )


def _chunk_len(kind: str, sequence_length, noise_density: float, mean_span: float) -> int:
  length = int(sequence_length["inputs"])
  if kind == "bert":
    return length
  return compute_input_and_target_lengths(length, noise_density, mean_span)[0]


def _concat_and_chunk(
  dataset: tf.data.Dataset,
  sequence_length,
  output_features,
  *,
  kind: str,
  lazy: _LazyTokenizer,
  noise_density: float = 0.15,
  mean_noise_span_length: float = 3.0,
) -> tf.data.Dataset:
  """Token ids of each document + ``<sep>``/``</s>``, concatenated and cut into chunks (the
  tail after the last full chunk is dropped), as ``{'targets': int32 [chunk_len]}``."""
  del output_features
  tok = lazy.get()
  append = tok.sep_id if kind == "bert" else tok.eos_id
  chunk_len = _chunk_len(kind, sequence_length, noise_density, mean_noise_span_length)
  ids = dataset.map(
    lambda ex: tf.concat([tf.cast(ex["targets"], tf.int32), tf.constant([append], tf.int32)], 0)
  )
  return ids.unbatch().batch(chunk_len, drop_remainder=True).map(lambda t: {"targets": t})


def _objective(
  dataset: tf.data.Dataset,
  sequence_length,
  output_features,
  *,
  kind: str,
  lazy: _LazyTokenizer,
  noise_density: float = 0.15,
  mean_noise_span_length: float = 3.0,
) -> tf.data.Dataset:
  """MLM / span corruption of each chunk with our numpy objective, seeded per example."""
  del output_features
  tok = lazy.get()
  seq_len = int(sequence_length["inputs"])
  if kind == "bert":
    p = default_max_predictions(seq_len)
    fn = functools.partial(
      mask_for_mlm,
      special_ids=tuple(sorted(tok.special_ids)),
      mask_id=tok.mask_id,
      vocab_size=tok.random_token_high,
      max_predictions=p,
    )
    keys = ("input_ids", "mlm_positions", "mlm_labels", "mlm_weights")
    tout = (tf.int32, tf.int32, tf.int32, tf.float32)
    shapes = ([seq_len], [p], [p], [p])
  else:
    _, tlen = compute_input_and_target_lengths(seq_len, noise_density, mean_noise_span_length)
    fn = functools.partial(
      span_corruption,
      sentinel_ids=tok.sentinel_ids,
      eos_id=tok.eos_id,
      pad_id=tok.pad_id,
      noise_density=noise_density,
      mean_noise_span_length=mean_noise_span_length,
    )
    keys = ("encoder_input_ids", "targets")
    tout = (tf.int32, tf.int32)
    shapes = ([seq_len], [tlen])

  def py(tokens, seed):
    rng = np.random.default_rng(np.asarray(seed).astype(np.uint32).tolist())
    out = fn(rng, np.asarray(tokens)[None, :])
    return tuple(out[k][0] for k in keys)

  @seqio.map_over_dataset(num_seeds=1)
  def apply(ex, seed):
    vals = tf.numpy_function(py, [ex["targets"], seed], tout)
    for v, s in zip(vals, shapes):
      v.set_shape(s)
    if kind == "bert":
      return {
        "inputs": vals[0],
        "targets": ex["targets"],
        "mlm_positions": vals[1],
        "mlm_labels": vals[2],
        "mlm_weights": vals[3],
      }
    return {"inputs": vals[0], "targets": vals[1]}

  return apply(dataset)


# ----------------------------------------------------------------------------- registration
def _register(name: str, source, kind: str, lazy: _LazyTokenizer, text_key: str = "text"):
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  vocab = lazy.vocabulary()
  features = {
    "inputs": seqio.Feature(vocabulary=vocab, add_eos=False),
    "targets": seqio.Feature(vocabulary=vocab, add_eos=False),
  }
  return seqio.TaskRegistry.add(
    name,
    source=source,
    output_features=features,
    preprocessors=[
      functools.partial(_to_targets, text_key=text_key),
      functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
      functools.partial(_concat_and_chunk, kind=kind, lazy=lazy),
      functools.partial(_objective, kind=kind, lazy=lazy),
    ],
    metric_fns=[],
  )


def register_c4_tasks(
  t5_tokenizer: str | None = None,
  bert_tokenizer: str | None = None,
  tfds_name: str = C4_TFDS_NAME,
  tfds_data_dir: str | None = None,
) -> list:
  """Register ``ntng_t5_span_corruption_c4`` (and ``ntng_bert_mlm_c4`` if a BERT tokenizer is
  given); returns the registered names."""
  source = seqio.TfdsDataSource(
    tfds_name=tfds_name, tfds_data_dir=tfds_data_dir, splits=("train", "validation")
  )
  names = []
  _register(
    "ntng_t5_span_corruption_c4", source, "t5", _LazyTokenizer(t5_tokenizer or T5_DEFAULT_SPM, "t5")
  )
  names.append("ntng_t5_span_corruption_c4")
  if bert_tokenizer:
    _register("ntng_bert_mlm_c4", source, "bert", _LazyTokenizer(bert_tokenizer, "bert"))
    names.append("ntng_bert_mlm_c4")
  return names


def register_text_tasks(
  name: str,
  train_files,
  validation_files=None,
  *,
  bert_tokenizer: str | None = None,
  t5_tokenizer: str | None = None,
) -> list:
  """Register ``ntng_bert_mlm_<name>`` / ``ntng_t5_span_corruption_<name>`` over local text
  files (one document per non-empty line) for each tokenizer given; returns the names."""
  splits = {"train": [str(f) for f in np.atleast_1d(train_files)]}
  if validation_files:
    splits["validation"] = [str(f) for f in np.atleast_1d(validation_files)]
  source = seqio.TextLineDataSource(split_to_filepattern=splits)
  names = []
  for kind, path, prefix in (
    ("bert", bert_tokenizer, "ntng_bert_mlm"),
    ("t5", t5_tokenizer, "ntng_t5_span_corruption"),
  ):
    if path:
      task = f"{prefix}_{name}"
      _register(task, source, kind, _LazyTokenizer(path, kind))
      names.append(task)
  return names


def _register_defaults() -> None:
  t5 = os.environ.get("NTNG_T5_TOKENIZER") or T5_DEFAULT_SPM
  bert = os.environ.get("NTNG_BERT_TOKENIZER") or None
  register_c4_tasks(t5_tokenizer=t5, bert_tokenizer=bert)
  text_dir = Path(os.environ.get("NTNG_TEXT_DATA_DIR", str(_SHARED_TEXT)))
  if text_dir.is_dir():
    for d in sorted(p for p in text_dir.iterdir() if (p / "train.txt").is_file()):
      val = d / "validation.txt"
      register_text_tasks(
        d.name,
        [d / "train.txt"],
        [val] if val.is_file() else None,
        bert_tokenizer=bert,
        t5_tokenizer=t5,
      )


_register_defaults()
