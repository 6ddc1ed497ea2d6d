"""Export a run's checkpoint in the original PyTorch layout (`export_run`), and import such a
directory back into a new workdir (`import_weights`).

An export directory holds:
- `model.safetensors`: the state dict of cramming's `ScriptableLMForPreTraining` (BERT) or
  nanoT5's `MyT5` (T5), float32, names and layouts of `ntng_jax.interop.layout`;
- `config.json`: that codebase's config (cramming `arch` fields / HF `T5Config` fields);
- `ntng_config.json`: the run's ntng_jax config at the exported depth (what import rebuilds);
- `tokenizer/`: the run's tokenizer files, when the run has them.

`import_weights` writes a workdir that `launch.finetune` and `launch.export` read like a
pre-training workdir: `config.json`, `tokenizer/` and a checkpoint (step 0) holding the params.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import ml_collections
import numpy as np

from ntng_jax.errors import UserError
from ntng_jax.eval.pretrained import abstract_params, read_config
from ntng_jax.interop import layout, safetensors
from ntng_jax.models import build_model
from ntng_jax.train import checkpoint as checkpoint_lib

WEIGHTS, TORCH_CONFIG, NTNG_CONFIG, TOKENIZER = (
  "model.safetensors",
  "config.json",
  "ntng_config.json",
  "tokenizer",
)


class TransferError(UserError, ValueError):
  """A workdir or export directory that cannot be exported or imported; says what to do."""


def _model_config_at(config, depth: int):
  model_cfg = config.model.copy_and_resolve_references()
  model_cfg.num_layers = int(depth)
  return model_cfg


def restore_params(workdir: str, step: int | None = None):
  """(step, depth, unboxed numpy params, config) of the newest intact checkpoint, or of `step`."""
  config = read_config(workdir)
  ckpt = checkpoint_lib.Checkpointer(workdir)

  def read(s, loop):
    depth = int(loop.get("depth", config.model.num_layers))
    model = build_model(_model_config_at(config, depth))
    return depth, checkpoint_lib.restore_params(ckpt.step_dir(s), abstract_params(model))

  try:
    if step is None:
      step, got, _ = ckpt.newest_usable(read)
      if step is None:
        raise TransferError(
          f"'{workdir}' has no checkpoint; let its launch.pretrain run save one before exporting."
        )
    else:
      got = ckpt.read_step(int(step), read)
  except checkpoint_lib.CheckpointError as e:
    raise TransferError(str(e)) from None
  finally:
    ckpt.close()
  depth, params = got
  return int(step), depth, jax.tree.map(np.asarray, params), config


def export_run(
  workdir: str, output: str, step: int | None = None, fmt: str = "safetensors"
) -> dict:
  """Writes the export directory `output` from the run in `workdir`; returns a summary dict."""
  if fmt != "safetensors":
    raise TransferError(f"--format={fmt!r} is not supported; use --format=safetensors.")
  step, depth, params, config = restore_params(workdir, step)
  family = config.model.family
  tensors = layout.to_torch(family, params)
  config = config.copy_and_resolve_references()
  config.model.num_layers = depth
  os.makedirs(output, exist_ok=True)
  meta = dict(format="pt", source="ntng_jax", family=family, step=str(step), depth=str(depth))
  safetensors.save_file(tensors, os.path.join(output, WEIGHTS), metadata=meta)
  with open(os.path.join(output, TORCH_CONFIG), "w") as f:
    json.dump(layout.torch_config(config.model, config.data.seq_len), f, indent=1)
  with open(os.path.join(output, NTNG_CONFIG), "w") as f:
    f.write(config.to_json(indent=1))
  tok = os.path.join(workdir, TOKENIZER)
  if os.path.isdir(tok):
    shutil.rmtree(os.path.join(output, TOKENIZER), ignore_errors=True)
    shutil.copytree(tok, os.path.join(output, TOKENIZER))
  return dict(
    step=step,
    depth=depth,
    family=family,
    tensors=len(tensors),
    parameters=int(sum(np.size(v) for v in tensors.values())),
    output=output,
  )


def read_export(directory: str):
  """(ntng config, unboxed numpy params) of an export directory."""
  for name in (WEIGHTS, NTNG_CONFIG):
    if not os.path.isfile(os.path.join(directory, name)):
      raise TransferError(
        f"'{directory}' has no {name}; pass a directory written by `python -m launch.export`."
      )
  with open(os.path.join(directory, NTNG_CONFIG)) as f:
    config = ml_collections.ConfigDict(json.load(f))
  tensors, _ = safetensors.load_file(os.path.join(directory, WEIGHTS))
  model = build_model(config.model)
  return config, layout.from_torch(config.model.family, tensors, abstract_params(model))


def import_weights(directory: str, workdir: str) -> dict:
  """Writes a workdir holding the export's params (checkpoint step 0) and config."""
  config, params = read_export(directory)
  if (
    os.path.isdir(os.path.join(workdir, "checkpoints"))
    and checkpoint_lib.Checkpointer(workdir).steps()
  ):
    raise TransferError(f"'{workdir}' already holds checkpoints; import into a new --workdir.")
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json(indent=1))
  tok = os.path.join(directory, TOKENIZER)
  if os.path.isdir(tok):
    shutil.rmtree(os.path.join(workdir, TOKENIZER), ignore_errors=True)
    shutil.copytree(tok, os.path.join(workdir, TOKENIZER))
  ckpt = checkpoint_lib.Checkpointer(workdir)
  try:
    ckpt.save(
      0,
      {"params": params},
      dict(
        step=0,
        depth=int(config.model.num_layers),
        rst_seconds=0.0,
        tokens=0,
        imported_from=os.path.abspath(directory),
      ),
    )
  finally:
    ckpt.close()
  return dict(workdir=workdir, family=config.model.family, depth=int(config.model.num_layers))
