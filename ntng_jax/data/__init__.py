"""Data: corpus -> tokenizer -> fixed-length chunks (with stable ids) -> objective -> batches.

``build_dataset(config.data, model_family, vocab_size, workdir)`` is the entry point; the data
config is read once into a :class:`DataSpec`. Sources: 'synthetic', 'text', 'shards' (written by
``python -m launch.prepare_data``), 'tfds' (streamed). Importing this package never imports
TensorFlow, seqio or TFDS (``seqio_tasks`` needs them and is imported only on use). Module map:
docs/data.md.
"""

from ntng_jax.data.build import build_dataset
from ntng_jax.data.dataset import Dataset
from ntng_jax.data.errors import DataError
from ntng_jax.data.layout import chunk_layout, make_objective
from ntng_jax.data.objectives import (
  compute_input_and_target_lengths,
  default_max_predictions,
  mask_for_mlm,
  reconstruct_from_span_corruption,
  span_corruption,
)
from ntng_jax.data.pipeline import (
  BatchIterator,
  Prefetcher,
  chunk_token_stream,
  epochs_seen,
  holdout_split,
  iter_chunk_blocks,
  unigram_entropy_nats,
)
from ntng_jax.data.resolver import ValidationResolver
from ntng_jax.data.sources import read_text_lines
from ntng_jax.data.spec import SOURCES, DataSpec, as_spec, config_defaults
from ntng_jax.data.synthetic import SyntheticCorpus
from ntng_jax.data.tokenizers import Tokenizer, default_num_sentinels, train_tokenizer
from ntng_jax.data.validation import (
  HELDOUT,
  apply_validation_overrides,
  fixed_batches,
  pop_validation_overrides,
  validation_spec,
)

__all__ = [
  "HELDOUT",
  "SOURCES",
  "BatchIterator",
  "DataError",
  "DataSpec",
  "Dataset",
  "Prefetcher",
  "SyntheticCorpus",
  "Tokenizer",
  "ValidationResolver",
  "apply_validation_overrides",
  "as_spec",
  "build_dataset",
  "chunk_layout",
  "chunk_token_stream",
  "compute_input_and_target_lengths",
  "config_defaults",
  "default_max_predictions",
  "default_num_sentinels",
  "epochs_seen",
  "fixed_batches",
  "holdout_split",
  "iter_chunk_blocks",
  "make_objective",
  "mask_for_mlm",
  "pop_validation_overrides",
  "read_text_lines",
  "reconstruct_from_span_corruption",
  "span_corruption",
  "train_tokenizer",
  "unigram_entropy_nats",
  "validation_spec",
]
