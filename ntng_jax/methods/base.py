"""The method hook protocol: what the trainer asks a method each step.

A method is a small object of pure hooks with the baseline's behaviour as defaults:

- `initial_depth()`: layers of the first compiled program (stacking starts shallow);
- `plan(rst_fraction, step) -> Plan`: the depth (static: a change recompiles once) and the keep
  vector (dynamic: layer dropping; never recompiles) for the next step, from the RST clock;
- `charges(plan, batch_size)`: what that step will execute, for the RST meter;
- `host_state()` / `restore_host_state(d)`: a JSON-able dict saved in every checkpoint (e.g. the
  stacking stage), so a resumed run continues with the same method state.

Methods never read wall-clock time or the step count for schedules: only the RST fraction.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ntng_jax.rst import Charge


@dataclasses.dataclass(frozen=True)
class Plan:
  depth: int                          # layers in the compiled program
  keep: np.ndarray | None = None      # bool[depth]; None = every layer runs

  @property
  def active_layers(self) -> int:
    return self.depth if self.keep is None else int(np.sum(self.keep))


class Method:
  """The baseline: full depth, every layer, one forward+backward per sequence."""

  name = "baseline"

  def __init__(self, config):
    self.config = config
    self.num_layers = int(config.model.num_layers)

  def initial_depth(self) -> int:
    return self.num_layers

  def plan(self, rst_fraction: float, step: int) -> Plan:
    del rst_fraction, step
    return Plan(depth=self.num_layers)

  def charges(self, plan: Plan, batch_size: int) -> list[Charge]:
    return [Charge("train", plan.active_layers, batch_size)]

  def host_state(self) -> dict:
    return {}

  def restore_host_state(self, state: dict) -> None:
    del state

  def metrics(self, plan: Plan) -> dict:
    """Extra per-record metrics (e.g. the drop level)."""
    return {"active_layers": plan.active_layers}


def build_method(config) -> Method:
  """The method named by `config.method.name`."""
  name = config.method.name
  if name in ("baseline", "lion", "sophia", "il_model"):
    # Optimizer methods change only the optimizer (configs set optim.*); il_model is a baseline run
    # on the held-out split (batch selection, a later module).
    return Method(config)
  raise NotImplementedError(f"method {name!r} is not available in this build; use one of"
                            " baseline, lion, sophia.")
