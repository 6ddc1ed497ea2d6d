"""Imports a directory written by `launch.export` (or laid out like it) into a new workdir.

  python -m launch.import_weights --input=DIR --workdir=NEW

NEW then holds config.json, tokenizer/ and a step-0 checkpoint of the params: fine-tune it with
`python -m launch.finetune --pretrained=NEW ...` or export it again.
"""

from absl import flags

from launch import common

_INPUT = flags.DEFINE_string("input", None, "Directory written by launch.export.")
_WORKDIR = flags.DEFINE_string("workdir", None, "New workdir to create.")


def main(argv):
  del argv

  def run():
    from ntng_jax.interop import transfer

    if not _INPUT.value or not _WORKDIR.value:
      raise transfer.TransferError("pass both --input=DIR and --workdir=NEW.")
    s = transfer.import_weights(_INPUT.value, _WORKDIR.value)
    print(f"Imported a {s['family']} model of {s['depth']} layers into {s['workdir']}.")

  common.run_cleanly(run)


if __name__ == "__main__":
  common.main(main, check_config=False)
