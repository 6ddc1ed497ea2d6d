"""Export to the paper's PyTorch layouts and import back: file format, names, round trips."""

import json
import os
import struct

import jax
import numpy as np
import pytest
from conftest import REPO, fixed_table, run_module, tiny_config

from ntng_jax import data as data_lib
from ntng_jax import partitioning
from ntng_jax.eval.pretrained import abstract_params, load_pretrained
from ntng_jax.interop import layout, safetensors, transfer
from ntng_jax.models import build_model
from ntng_jax.optim import build_optimizer
from ntng_jax.train import loop, programs, validation

MANIFESTS = REPO / "tests" / "data" / "interop"
STEP_SECONDS = 0.02


def _random_params(family, seed=0):
  model = build_model(tiny_config(family).model)
  abstract = abstract_params(model)
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(a.dtype), abstract), abstract


def _leaves_equal(a, b):
  la, lb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (path, x), (_, y) in zip(la, lb):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape, jax.tree_util.keystr(path)
    assert x.tobytes() == y.tobytes(), f"{jax.tree_util.keystr(path)} differs"


def test_safetensors_file_format(tmp_path):
  tensors = {
    "b": np.arange(6, dtype=np.float32).reshape(2, 3),
    "a": np.array(1.5, np.float32),
    "c": np.arange(4, dtype=np.int64),
  }
  path = str(tmp_path / "x.safetensors")
  safetensors.save_file(tensors, path, metadata={"format": "pt"})
  raw = open(path, "rb").read()
  (n,) = struct.unpack("<Q", raw[:8])
  header = json.loads(raw[8 : 8 + n])
  assert header["__metadata__"] == {"format": "pt"}
  assert header["b"] == {"dtype": "F32", "shape": [2, 3], "data_offsets": [4, 28]}
  assert header["a"]["shape"] == [] and header["c"]["dtype"] == "I64"
  assert len(raw) == 8 + n + 4 + 24 + 32 and (8 + n) % 8 == 0
  back, meta = safetensors.load_file(path)
  assert meta == {"format": "pt"} and sorted(back) == ["a", "b", "c"]
  for k in tensors:
    assert back[k].dtype == tensors[k].dtype and np.array_equal(back[k], tensors[k])
  with open(path, "wb") as f:
    f.write(b"\x05\x00\x00\x00\x00\x00\x00\x00notjs")
  with pytest.raises(safetensors.SafetensorsError, match="not JSON"):
    safetensors.load_file(path)


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_names_and_shapes_match_the_original_code(family):
  """The committed manifest was written by instantiating the paper's own torch model
  (cramming ScriptableLMForPreTraining / nanoT5 MyT5) at tiny dims (ntng_jax/interop/peer_check.py)."""
  want = json.loads((MANIFESTS / f"{family}_tiny_torch_manifest.json").read_text())["tensors"]
  model = build_model(tiny_config(family).model)
  assert layout.manifest(family, abstract_params(model)) == want


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_layout_round_trip_is_bitwise_and_transposes(family):
  params, abstract = _random_params(family)
  tensors = layout.to_torch(family, params)
  _leaves_equal(layout.from_torch(family, tensors, abstract), params)
  if family == "bert":  # torch Linear weight = [out, in]; qkv fused as [q|k|v], heads contiguous
    qkv = np.asarray(params["encoder"]["layers"]["attn"]["qkv"]["kernel"][1])  # [D, 3, H, Dh]
    w = tensors["encoder.layers.1.attn.self_attention.flash_mha.Wqkv.weight"]
    d, _, h, dh = qkv.shape
    assert w[1 * h * dh + 1 * dh + 3, 5] == qkv[5, 1, 1, 3]  # k, head 1, dim 3 <- input 5
    assert np.array_equal(
      tensors["decoder.weight"], tensors["encoder.embedding.word_embedding.weight"]
    )
  else:
    o = np.asarray(params["decoder"]["blocks"]["layers"]["cross_attn"]["o"]["kernel"][0])
    w = tensors["decoder.block.0.layer.1.EncDecAttention.o.weight"]
    assert w[7, 1 * o.shape[1] + 2] == o[1, 2, 7]
  bad = dict(tensors)
  name = next(iter(sorted(bad)))
  bad[name + ".extra"] = np.zeros(1, np.float32)
  with pytest.raises(layout.LayoutError, match="do not belong"):
    layout.from_torch(family, bad, abstract)


def _val_loss(config, params, workdir):
  """Validation loss of `params` on the run's own held-out batches (the loop's evaluation)."""
  t = config.train
  dataset = data_lib.build_dataset(
    config.data, config.model.family, config.model.vocab_size, str(workdir)
  )
  batches = dataset.validation_batches(t.micro_batch_size, seed=0, max_batches=t.validation_batches)
  mesh = partitioning.make_mesh(config.mesh)
  example = {k: np.asarray(v) for k, v in batches[0].items()}
  built = programs.build_programs(
    config,
    programs.model_at_depth(config, config.model.num_layers),
    build_optimizer(config.optim),
    mesh,
    example,
  )
  params = jax.device_put(params, built.shardings.params)
  return validation.evaluate(built, params, batches, mesh)["validation_loss"]


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_export_import_round_trip(tmp_path, family):
  config = tiny_config(
    family, **{"train.max_steps": 2, "data.num_lines": 2000, "train.validation_batches": 2}
  )
  config.rst.table = fixed_table(config, tmp_path / "table.json", STEP_SECONDS)
  run, out, new = tmp_path / "run", tmp_path / "export", tmp_path / "imported"
  summary = loop.train_and_evaluate(config, str(run))
  run_module("launch.export", f"--workdir={run}", "--format=safetensors", f"--output={out}")
  assert sorted(os.listdir(out)) == [
    "config.json",
    "model.safetensors",
    "ntng_config.json",
    "tokenizer",
  ]
  torch_cfg = json.loads((out / "config.json").read_text())
  if family == "bert":
    assert torch_cfg["arch"]["num_transformer_layers"] == 2
  else:
    assert torch_cfg["d_model"] == 64 and torch_cfg["share_positional_bias"] is False
  transfer.import_weights(str(out), str(new))

  step, depth, original, run_config = transfer.restore_params(str(run))
  step2, depth2, imported, _ = transfer.restore_params(str(new))
  assert (step, depth, step2, depth2) == (2, 2, 0, 2)
  _leaves_equal(imported, original)

  _leaves_equal(jax.tree.map(np.asarray, load_pretrained(str(new)).params), original)

  loss = _val_loss(run_config, imported, run)
  assert loss == pytest.approx(summary["final_validation_loss"], rel=1e-6)
  assert loss == _val_loss(run_config, original, run)

  with pytest.raises(transfer.TransferError, match="no checkpoint of step 7"):
    transfer.export_run(str(run), str(out), step=7)
  # Errors end in one sentence, no traceback.
  proc = run_module("launch.import_weights", f"--input={out}", f"--workdir={new}", check=False)
  assert proc.returncode == 2 and "already holds checkpoints" in proc.stderr
  assert "Traceback" not in proc.stderr
