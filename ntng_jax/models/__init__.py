"""Models: `build_model(model_cfg) -> LanguageModel` (see docs/architecture.md, "Models").

    cfg = model_config('bert', 'tiny')
    model = build_model(cfg)
    params = model.init(jax.random.key(0), batch)      # boxed: nn.Partitioned leaves
    logits, labels, weights = model.logits(params, batch, keep=None)
    loss = losses.mean_token_loss(logits, labels, weights)

`init` returns the 'params' collection with logical axis names (`nn.Partitioned` boxes); use
`nn.unbox(params)` (flax.linen.meta.unbox) for plain arrays. `logits` accepts either.
Hidden states for fine-tuning: `model.module.apply({'params': p}, input_ids, attention_mask,
method='encode')` (BERT, [B, S, D]); T5 `encode`/`decode` likewise; T5 generation:
`greedy_decode(model, params, encoder_input_ids, max_decode_len)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ntng_jax.models import losses
from ntng_jax.models.bert import Bert
from ntng_jax.models.gpt import GPT
from ntng_jax.models.sizes import SIZES, model_config, validate, with_defaults
from ntng_jax.models.t5 import T5, greedy_decode

__all__ = [
  "LanguageModel",
  "build_model",
  "model_config",
  "SIZES",
  "losses",
  "greedy_decode",
  "param_count",
  "Bert",
  "T5",
  "GPT",
]


def param_count(params) -> int:
  """Number of scalars in a (boxed or unboxed) parameter tree; works on ShapeDtypeStructs."""
  return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(nn.unbox(params))))


@dataclasses.dataclass(frozen=True)
class LanguageModel:
  """A model family bound to its config.

  init(rng, batch) -> params ('params' collection, boxed with logical axis names).
  logits(params, batch, keep=None, dtype=jnp.float32, deterministic=True, rng=None)
      -> (logits [B, T, V] float32, labels [B, T], weights [B, T]); keep: None or bool [L].
  num_layers: current depth (leading 'layers' axis of stacked parameters).
  param_count(params) -> int.
  """

  cfg: Any
  module: nn.Module
  init: Callable[..., Any]
  logits: Callable[..., Any]
  num_layers: int
  param_count: Callable[[Any], int]


def _inputs(family: str, batch) -> dict:
  """The module's keyword arguments from a batch (docs/architecture.md batch contract)."""
  if family == "bert":
    return dict(
      input_ids=batch["input_ids"],
      mlm_positions=batch["mlm_positions"],
      attention_mask=batch.get("attention_mask"),
    )
  if family == "gpt":
    return dict(input_ids=batch["input_ids"])
  return dict(
    encoder_input_ids=batch["encoder_input_ids"],
    decoder_input_ids=batch["decoder_input_ids"],
    encoder_mask=batch.get("encoder_mask"),
  )


def _targets(family: str, batch):
  if family == "bert":
    return batch["mlm_labels"], batch["mlm_weights"]
  return batch["targets"], batch["target_weights"]


def build_model(cfg) -> LanguageModel:
  """Builds the model of `cfg` (a ConfigDict from `model_config`, or any mapping of its fields)."""
  cfg = ml_collections.ConfigDict(with_defaults(cfg))
  validate(cfg)
  cfg = ml_collections.FrozenConfigDict(cfg)  # hashable, safe as a module attribute
  family = cfg.family
  module = {"bert": Bert, "t5": T5, "gpt": GPT}[family](cfg)

  def init(rng, batch):
    return module.init({"params": rng}, **_inputs(family, batch))["params"]

  def logits(params, batch, keep=None, dtype=jnp.float32, deterministic=True, rng=None):
    mod = module.clone(dtype=dtype, deterministic=deterministic)
    rngs = {} if rng is None else {"dropout": rng}
    out = mod.apply({"params": nn.unbox(params)}, **_inputs(family, batch), keep=keep, rngs=rngs)
    labels, weights = _targets(family, batch)
    return out, labels, weights

  return LanguageModel(
    cfg=cfg,
    module=module,
    init=init,
    logits=logits,
    num_layers=cfg.num_layers,
    param_count=param_count,
  )
