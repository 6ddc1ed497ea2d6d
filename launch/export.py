"""Exports a run's parameters in the original PyTorch code's names and layouts.

  python -m launch.export --workdir=RUN --format=safetensors --output=DIR [--step=N]

DIR gets model.safetensors (cramming's ScriptableLMForPreTraining / nanoT5's MyT5 state dict),
config.json (that code's config), ntng_config.json and tokenizer/. Without --step the newest
intact checkpoint is used. Load it back with `python -m launch.import_weights`.
"""

from absl import flags

from launch import common

_WORKDIR = flags.DEFINE_string("workdir", None, "The launch.pretrain run to export.")
_OUTPUT = flags.DEFINE_string("output", None, "Export directory.")
_FORMAT = flags.DEFINE_string("format", "safetensors", "File format (safetensors).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest intact one).")


def main(argv):
  del argv

  def run():
    from ntng_jax.interop import transfer

    if not _WORKDIR.value or not _OUTPUT.value:
      raise transfer.TransferError("pass both --workdir=RUN and --output=DIR.")
    s = transfer.export_run(_WORKDIR.value, _OUTPUT.value, _STEP.value, _FORMAT.value)
    print(
      f"Exported step {s['step']} ({s['family']}, {s['depth']} layers, {s['tensors']} tensors,"
      f" {s['parameters']:,} values) to {s['output']}."
    )

  common.run_cleanly(run)


if __name__ == "__main__":
  common.main(main, check_config=False)
