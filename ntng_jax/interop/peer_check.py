"""Checks an export against the paper's own PyTorch models (run with a torch interpreter).

  PEER_SRC=/work/peer_src /work/peer_venv/bin/python ntng_jax/interop/peer_check.py \
      --export=DIR [--inputs=inputs.npz --logits=out.npz] [--manifest=manifest.json]

Instantiates cramming's `ScriptableLMForPreTraining` (from `config.json`'s `arch`) or nanoT5's
`MyT5` (from its T5Config fields), writes the model's own state-dict names and shapes
(`--manifest`), loads `model.safetensors` with `load_state_dict(strict=True)` and, with
`--inputs`, writes the logits of the given inputs. Needs torch, transformers, omegaconf, einops
and safetensors; never imported by ntng_jax (which has no torch dependency). cramming's
`flash-attention-impl` needs the CUDA-only `flash_attn` package; a CPU stand-in with the same
parameters (`FlashMHA.Wqkv`, `out_proj`) and exact softmax attention is installed when it is absent.
"""

import argparse
import json
import math
import os
import sys
import types

# Run as a script, this file's directory (which holds ntng_jax's own `safetensors.py`) would
# shadow the `safetensors` package.
sys.path = [
  x for x in sys.path if os.path.abspath(x or ".") != os.path.dirname(os.path.abspath(__file__))
]

import numpy as np  # noqa: E402


def _install_flash_attn_stand_in(torch):
  if "flash_attn" in sys.modules:
    return
  try:
    import flash_attn.flash_attention  # noqa: F401

    return
  except ImportError:
    pass

  class InnerAttention(torch.nn.Module):
    def forward(self, qkv, key_padding_mask=None, need_weights=False, causal=False):
      q, k, v = qkv.unbind(dim=2)  # [b, s, h, d]
      scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
      probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)
      return torch.einsum("bhqk,bkhd->bqhd", probs, v), None

  class FlashMHA(torch.nn.Module):
    def __init__(
      self,
      embed_dim,
      num_heads,
      bias=True,
      batch_first=True,
      attention_dropout=0.0,
      causal=False,
      device=None,
      dtype=None,
    ):
      super().__init__()
      self.embed_dim, self.num_heads, self.causal = embed_dim, num_heads, causal
      self.Wqkv = torch.nn.Linear(embed_dim, 3 * embed_dim, bias=bias)
      self.inner_attn = InnerAttention()
      self.out_proj = torch.nn.Linear(embed_dim, embed_dim, bias=bias)

  import importlib.machinery

  pkg = types.ModuleType("flash_attn")
  pkg.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)
  mod = types.ModuleType("flash_attn.flash_attention")
  mod.__spec__ = importlib.machinery.ModuleSpec("flash_attn.flash_attention", None)
  mod.FlashMHA = FlashMHA
  pkg.flash_attention = mod
  sys.modules["flash_attn"], sys.modules["flash_attn.flash_attention"] = pkg, mod


def _package(name, path):
  """Registers `name` as a package at `path` without running its __init__ (heavy imports)."""
  mod = types.ModuleType(name)
  mod.__path__ = [path]
  sys.modules[name] = mod


def build_bert(torch, peer_src, cfg):
  from omegaconf import OmegaConf

  root = os.path.join(peer_src, "bert")
  _package("cramming", os.path.join(root, "cramming"))
  _package("cramming.architectures", os.path.join(root, "cramming", "architectures"))
  from cramming.architectures.scriptable_bert import construct_scriptable_bert

  _install_flash_attn_stand_in(torch)  # after transformers has probed for flash_attn
  arch = OmegaConf.create(cfg["arch"])
  return construct_scriptable_bert(arch, cfg["arch"]["embedding"]["vocab_size"])


def build_t5(torch, peer_src, cfg):
  from transformers import T5Config

  _package("t5", os.path.join(peer_src, "t5", "t5"))
  _package("t5.models", os.path.join(peer_src, "t5", "t5", "models"))
  from t5.models.t5 import MyT5

  fields = {k: v for k, v in cfg.items() if k not in ("architectures", "input_length")}
  return MyT5(T5Config(**fields))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--export", required=True)
  p.add_argument("--manifest", default="")
  p.add_argument("--inputs", default="")
  p.add_argument("--logits", default="")
  p.add_argument("--peer_src", default=os.environ.get("PEER_SRC", "/work/peer_src"))
  p.add_argument("--no_load", action="store_true", help="manifest only (random init)")
  a = p.parse_args()
  import torch

  torch.manual_seed(0)
  with open(os.path.join(a.export, "config.json")) as f:
    cfg = json.load(f)
  family = "bert" if cfg.get("model_type") == "crammedBERT" else "t5"
  model = (build_bert if family == "bert" else build_t5)(torch, a.peer_src, cfg)
  model.eval()
  state = model.state_dict()
  if a.manifest:
    with open(a.manifest, "w") as f:
      json.dump(
        dict(
          family=family,
          source=type(model).__name__,
          tensors={k: list(v.shape) for k, v in sorted(state.items())},
        ),
        f,
        indent=1,
      )
  if a.no_load:
    return
  from safetensors.torch import load_file

  result = model.load_state_dict(
    load_file(os.path.join(a.export, "model.safetensors")), strict=True
  )
  print(f"load_state_dict(strict=True): {result}")
  if a.inputs:
    x = np.load(a.inputs)
    with torch.no_grad():
      if family == "bert":
        hidden = model.encoder(torch.from_numpy(x["input_ids"]).long())
        logits = model.decoder(model.prediction_head(hidden))
      else:
        out = model(
          input_ids=torch.from_numpy(x["encoder_input_ids"]).long(),
          decoder_input_ids=torch.from_numpy(x["decoder_input_ids"]).long(),
        )
        logits = out.logits
    np.savez(a.logits, logits=logits.float().numpy())
    print(f"wrote {a.logits}: logits {tuple(logits.shape)}")


if __name__ == "__main__":
  main()
