"""The on-disk format of a shards directory (written by ``shard_writer``, read by ``shards``).

``manifest.json`` (written last: marks completion), ``spm.model`` + ``tokenizer.json`` (the
tokenizer) and ``chunks-00000.npy ...``: uint16 (vocab <= 65536) or uint32 [rows, chunk_len].
Row ``i`` of the shards read in order is chunk ``i``, with stable example id ``i``. The manifest
fields are listed in docs/data.md.
"""

MANIFEST = "manifest.json"
FORMAT = "ntng_jax.shards/1"
PREPARE_HINT = "python -m launch.prepare_data --model=bert|t5|gpt --input=CORPUS --output=DIR"
