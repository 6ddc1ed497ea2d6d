"""All parallelism in one place: the device mesh, the logical-axis rules, and shardings.

Parameters and activations carry logical axis names (set in `ntng_jax/models`); this module maps
them onto a `Mesh` with axes ('data', 'fsdp', 'tensor'):

- data:   pure data parallelism (batch split, parameters replicated);
- fsdp:   batch split *and* parameters/optimizer state sharded along their 'embed' axis (ZeRO-3);
- tensor: Megatron-style model parallelism over heads and the MLP width, and the vocabulary.

Which to use: tiny/small/base fit on one accelerator, so `data` alone is the default; use `fsdp` when
parameters plus Adam moments no longer fit (≈ 16 bytes/parameter in f32), and `tensor` only for
widths of several thousand across fast interconnect (one host).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ntng_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis name -> mesh axis (None = replicated). Names absent here are replicated too.
LOGICAL_AXIS_RULES = (
  # parameters
  ("vocab", "tensor"),
  ("embed", "fsdp"),
  ("heads", "tensor"),
  ("mlp", "tensor"),
  ("qkv", None),
  ("kv", None),
  ("layers", None),
  ("relpos_buckets", None),
  # activations
  ("act_batch", BATCH_AXES),
  ("act_length", None),
  ("act_embed", None),
  ("act_heads", "tensor"),
  ("act_mlp", "tensor"),
  ("act_vocab", "tensor"),
)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  """Builds the ('data', 'fsdp', 'tensor') mesh; one size may be -1 to take the remaining devices."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = [int(mesh_cfg.data), int(mesh_cfg.fsdp), int(mesh_cfg.tensor)]
  if sizes.count(-1) > 1:
    raise ConfigError("mesh: at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1.")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ConfigError(
        f"mesh: {len(devices)} devices are not divisible by the fixed mesh sizes"
        f" (product {known}); change mesh.fsdp/mesh.tensor."
      )
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ConfigError(
      f"mesh: data×fsdp×tensor = {math.prod(sizes)} but {len(devices)} devices are"
      " available; set one of mesh.data/fsdp/tensor to -1."
    )
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def rules_context():
  """Context in which models' `with_logical_constraint` resolve against our rules."""
  return nn.logical_axis_rules(LOGICAL_AXIS_RULES)


@contextlib.contextmanager
def activate(mesh: Mesh):
  """Traces and runs under `mesh` with our rules, so activation constraints take effect."""
  with jax.set_mesh(mesh), rules_context():
    yield


def logical_shardings(mesh: Mesh, abstract_boxed_tree: Any) -> Any:
  """NamedShardings for a tree whose leaves may be `nn.Partitioned` boxes (unboxed structure)."""
  specs = nn.get_partition_spec(abstract_boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_AXIS_RULES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Every batch array is split along its leading (example) axis over data × fsdp."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(mesh: Mesh, local_batch: dict) -> dict:
  """Assembles this process's rows into global arrays sharded along the batch axis.

  Single process: the rows are the whole batch. Multi-host: each process passes its contiguous
  share and `make_array_from_process_local_data` stitches them together.
  """
  sharding = batch_sharding(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
    for k, v in local_batch.items()
  }


def batch_divisor(mesh: Mesh) -> int:
  """Global batches (and micro-batches) must be multiples of this."""
  return mesh.shape["data"] * mesh.shape["fsdp"]
