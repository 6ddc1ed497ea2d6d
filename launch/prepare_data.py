"""Tokenise a corpus once into packed, memory-mapped chunk shards plus its tokenizer.

  python -m launch.prepare_data --model=bert --input=corpus.txt --output=/data/shards_bert
  python -m launch.prepare_data --model=t5 --input=corpus_dir/ --output=/data/shards_t5 \
      --seq_len=512 --vocab_size=32100
  python -m launch.prepare_data --model=t5 --input=tfds:c4/en:3.1.0 --max_docs=1000000 \
      --tokenizer=spiece.model --output=/data/c4_t5          # needs tensorflow-datasets

Check shards that may have been damaged (sizes and sha256 checksums recorded in the manifest):

  python -m launch.prepare_data --verify=/data/shards_bert

then pre-train from it with

  python -m launch.pretrain --config.data.source=shards --config.data.path=/data/shards_bert

`--input` is a .txt file (one document per non-empty line), a .jsonl file ('text' field), a
directory searched recursively for both, or `tfds:NAME[:SPLIT]`. Without `--tokenizer` a
tokenizer is trained on an even sample of the corpus (BERT: SentencePiece BPE, lower-cased,
specials <pad> <s> </s> <unk> <cls> <sep> <mask>; T5: SentencePiece unigram + sentinels);
`--tokenizer=PATH.model` wraps an existing SentencePiece model, `--tokenizer=DIR` reuses the
tokenizer of another shards directory (e.g. to prepare a validation corpus). The output
directory holds `manifest.json`, `spm.model`, `tokenizer.json` and `chunks-*.npy`
(format: docs/data.md). Defaults: the tokenizer size and sequence length per family are
``shard_writer.DEFAULT_VOCAB`` / ``DEFAULT_SEQ_LEN``; the held-out fraction and T5 noise
settings are those of ``config.data``.
"""

import json
import sys

from absl import flags

from launch import common
from ntng_jax.data.shard_writer import (
  DEFAULT_SEQ_LEN,
  DEFAULT_VOCAB,
  SHARD_MB,
  TOKENIZER_TRAIN_CHARS,
  prepare_shards,
)
from ntng_jax.data.shards import verify_shards
from ntng_jax.data.spec import default

_MODEL = flags.DEFINE_enum("model", None, ["bert", "t5", "gpt"], "Model family the chunks are for.")
_INPUT = flags.DEFINE_string("input", None, "Corpus file or directory, or tfds:NAME[:SPLIT].")
_OUTPUT = flags.DEFINE_string("output", None, "Output directory.")
_VOCAB = flags.DEFINE_integer(
  "vocab_size",
  None,
  f"Tokenizer ids (default {DEFAULT_VOCAB}; T5: pieces + 100 sentinels).",
)
_SEQ_LEN = flags.DEFINE_integer(
  "seq_len", None, f"BERT sequence length / T5 encoder input length (default {DEFAULT_SEQ_LEN})."
)
_TOKENIZER = flags.DEFINE_string(
  "tokenizer",
  "",
  "Existing SentencePiece .model file or tokenizer directory ('' = train one on the input).",
)
_SENTINELS = flags.DEFINE_integer(
  "num_sentinels", None, "T5 sentinels (default 100, or vocab_size // 20 for tiny vocabularies)."
)
_HOLDOUT = flags.DEFINE_float(
  "holdout_fraction", default("validation_fraction"), "Recorded in-domain held-out fraction."
)
_HOLDOUT_SEED = flags.DEFINE_integer("holdout_seed", 0, "Seed of the held-out split.")
_NOISE = flags.DEFINE_float(
  "noise_density", default("noise_density"), "T5 span-corruption noise density."
)
_SPAN = flags.DEFINE_float(
  "mean_noise_span_length", default("mean_noise_span_length"), "T5 mean noise span length."
)
_TRAIN_CHARS = flags.DEFINE_integer(
  "tokenizer_train_chars",
  TOKENIZER_TRAIN_CHARS,
  "Characters sampled evenly from the corpus to train the tokenizer.",
)
_SHARD_MB = flags.DEFINE_float("shard_mb", SHARD_MB, "Target size of one shard file (MiB).")
_MAX_DOCS = flags.DEFINE_integer("max_docs", 0, "Stop after this many documents (0 = all).")
_TFDS_DIR = flags.DEFINE_string("tfds_data_dir", "", "TFDS data_dir ('' = $TFDS_DATA_DIR).")
_TFDS_KEY = flags.DEFINE_string("tfds_text_key", "text", "Text feature of the TFDS dataset.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace existing shards in --output.")
_VERIFY = flags.DEFINE_string(
  "verify",
  "",
  "Check the shards in this directory against their "
  "manifest's sizes and sha256 checksums, then exit (nothing else "
  "runs).",
)


def main(argv):
  del argv
  if _VERIFY.value:
    common.run_cleanly(lambda: verify_shards(_VERIFY.value, log=lambda s: print(s, flush=True)))
    return
  missing = [f"--{f.name}" for f in (_MODEL, _INPUT, _OUTPUT) if not f.value]
  if missing:
    print(
      f"error: {', '.join(missing)} is required; see python -m launch.prepare_data --help.",
      file=sys.stderr,
    )
    sys.exit(2)

  def run():
    return prepare_shards(
      _INPUT.value,
      _OUTPUT.value,
      _MODEL.value,
      vocab_size=_VOCAB.value,
      seq_len=_SEQ_LEN.value,
      tokenizer=_TOKENIZER.value or None,
      num_sentinels=_SENTINELS.value,
      holdout_fraction=_HOLDOUT.value,
      holdout_seed=_HOLDOUT_SEED.value,
      noise_density=_NOISE.value,
      mean_noise_span_length=_SPAN.value,
      tokenizer_train_chars=_TRAIN_CHARS.value,
      shard_mb=_SHARD_MB.value,
      max_docs=_MAX_DOCS.value,
      overwrite=_OVERWRITE.value,
      tfds_data_dir=_TFDS_DIR.value or None,
      tfds_text_key=_TFDS_KEY.value,
      log=lambda s: print(s, flush=True),
    )

  manifest = common.run_cleanly(run)
  summary = {
    k: manifest[k]
    for k in (
      "family",
      "seq_len",
      "chunk_len",
      "num_docs",
      "num_tokens",
      "num_chunks",
      "dtype",
      "unigram_entropy_nats",
    )
  }
  summary["tokenizer"] = manifest["tokenizer"]["fingerprint"]
  summary["vocab_size"] = manifest["tokenizer"]["vocab_size"]
  print(json.dumps(summary))


if __name__ == "__main__":
  common.main(main, check_config=False)
