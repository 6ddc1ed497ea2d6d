"""Progressive layer dropping: schedule, sampling, keep semantics in the model and the train step,
masked updates of dropped layers, and more optimizer steps than the baseline for one RST budget."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from test_stacking import layer_leaves, make_batch, random_params, run_summary

from ntng_jax import rst
from ntng_jax.methods import layer_drop as ld
from ntng_jax.methods.base import build_method
from ntng_jax.models import build_model
from ntng_jax.optim import build_optimizer
from ntng_jax.train import state as state_lib
from ntng_jax.train import step as step_lib

# ---- config and schedule -------------------------------------------------------------------------


@pytest.mark.parametrize(
  "family, size, gamma, mask, lr",
  [
    ("bert", "tiny", 100.0, False, 3e-3),
    ("bert", "base", 100.0, False, 1e-3),
    ("t5", "tiny", 20.0, True, 2e-2),
    ("t5", "base", 20.0, True, 1e-2),
  ],
)
def test_default_config(family, size, gamma, mask, lr):
  config = tiny_config(family, f"size={size},method=layer_drop")
  assert config.method.theta_bar == 0.5
  assert config.method.gamma_factor == gamma
  assert config.method.mask_dropped_updates is mask
  assert config.optim.learning_rate == lr
  method = build_method(config)
  assert method.initial_depth() == config.model.num_layers


def test_drop_level():
  assert ld.drop_level(0.0, 0.5, 100.0) == 0.0
  for f in (0.001, 0.01, 0.1, 0.5):
    for theta, gamma in ((0.5, 100.0), (0.5, 20.0), (0.3, 5.0)):
      want = 1 - (theta + (1 - theta) * math.exp(-gamma * f))
      assert ld.drop_level(f, theta, gamma) == pytest.approx(want, rel=1e-12)
  levels = [ld.drop_level(f / 100, 0.5, 20.0) for f in range(101)]
  assert all(b > a for a, b in zip(levels, levels[1:])) and 0.4999 < levels[-1] < 0.5
  np.testing.assert_allclose(ld.drop_probabilities(0.5, 4), [0.125, 0.25, 0.375, 0.5])


def test_plan_is_deterministic_and_charged_at_active_layers():
  config = tiny_config("bert", "size=tiny,method=layer_drop", **{"model.num_layers": 16})
  a, b = build_method(config), build_method(config)  # b: e.g. a resumed run, or another host
  other = build_method(
    tiny_config("bert", "size=tiny,method=layer_drop,seed=1", **{"model.num_layers": 16})
  )
  plans = [a.plan(0.4, s) for s in range(50)]
  for s, p in enumerate(plans):
    # tiny BERT: one micro-batch per step, so one keep row (test_fidelity_methods: several)
    assert p.depth == 16 and p.keep.dtype == bool and p.keep.shape == (1, 16)
    np.testing.assert_array_equal(p.keep, b.plan(0.4, s).keep)
    assert p.drop_level == pytest.approx(ld.drop_level(0.4, 0.5, 100.0))
    assert a.metrics(p) == {"active_layers": int(p.keep.sum()), "drop_level": p.drop_level}
    assert a.charges(p, 32) == [rst.Charge("train", int(p.keep.sum()), 32)]
  assert len({p.keep.tobytes() for p in plans}) > 10  # resampled every step
  assert any((p.keep != other.plan(0.4, s).keep).any() for s, p in enumerate(plans))  # seed
  # At the start nothing is dropped; the keep vector is still given (one compiled program).
  assert a.plan(0.0, 0).keep.all()
  # Every layer dropped: still charged one layer (embeddings and head ran; tables start at 1).
  none = ld.DropPlan(depth=16, keep=np.zeros(16, bool), drop_level=0.5)
  assert a.charges(none, 32) == [rst.Charge("train", 1, 32)]


@pytest.mark.parametrize("fraction", [0.005, 1.0])
def test_empirical_drop_frequency(fraction):
  L, n = 16, 4000
  method = build_method(
    tiny_config("bert", "size=tiny,method=layer_drop", **{"model.num_layers": L})
  )
  level = ld.drop_level(fraction, 0.5, 100.0)
  dropped = np.stack([~method.plan(fraction, s).keep[0] for s in range(n)])
  p = level * np.arange(1, L + 1) / L
  sigma = np.sqrt(p * (1 - p) / n)
  assert np.all(np.abs(dropped.mean(0) - p) < 4.5 * sigma + 1e-9), (dropped.mean(0), p)
  # Expected depth L - D(L+1)/2: (3L-1)/4 = 11.75 for L = 16 at the end (docs/paper.md §4.2).
  active = L - dropped.sum(1)
  assert active.mean() == pytest.approx(L - level * (L + 1) / 2, abs=4 * active.std() / n**0.5)
  if fraction == 1.0:
    assert abs(active.mean() - 11.75) < 0.1
  # Layers are independent: correlation of the first and last layer's drops is ~0.
  assert abs(np.corrcoef(dropped[:, 0], dropped[:, -1])[0, 1]) < 0.08


# ---- keep semantics ------------------------------------------------------------------------------

_OUTPUT_PROJECTIONS = ("out", "o", "wo")  # the last Linear of every residual branch


def _identity_layers(params):
  """params whose every layer is the identity: residual branches' output projections zeroed."""

  def zero(path, x):
    names = [getattr(k, "key", None) for k in path]
    if "layers" in names and any(n in _OUTPUT_PROJECTIONS for n in names):
      return jnp.zeros_like(x)
    return x

  return jax.tree_util.tree_map_with_path(zero, params)


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_keep_all_is_full_model_and_keep_none_is_identity(family):
  config = tiny_config(family)
  model = build_model(config.model)
  batch = make_batch(family, config.model.vocab_size)
  params = random_params(model, batch)
  L = config.model.num_layers
  fwd = jax.jit(lambda p, keep: model.logits(p, batch, keep=keep)[0])
  full = jax.jit(lambda p: model.logits(p, batch)[0])
  np.testing.assert_allclose(fwd(params, jnp.ones(L, bool)), full(params), rtol=1e-6, atol=1e-6)
  # Every layer dropped = a stack of identity layers (T5: encoder and decoder stacks alike).
  np.testing.assert_allclose(
    fwd(params, jnp.zeros(L, bool)), full(_identity_layers(params)), rtol=1e-6, atol=1e-6
  )
  a, b = np.asarray(full(params)), np.asarray(full(_identity_layers(params)))
  assert np.abs(a - b).max() > 0.01 * np.abs(a).max()  # the layers do matter when kept


# ---- train step ----------------------------------------------------------------------------------


def _tree_equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_train_step_with_keep_is_conditional_and_masked_update():
  config = tiny_config("bert", "size=tiny,method=layer_drop")
  model = build_model(config.model)
  tx = build_optimizer(config.optim)
  batch = make_batch("bert", config.model.vocab_size, batch=8)
  state0 = state_lib.create(random_params(model, batch), tx)
  step = step_lib.make_train_step(model, tx, 2, "float32")
  rng = jax.random.PRNGKey(0)
  controls = {"learning_rate": np.float32(1e-3), "keep": np.ones(2, bool)}
  lowered = jax.jit(step).lower(state0, batch, rng, controls)
  text = lowered.as_text()
  assert "stablehlo.case" in text or "conditional" in text
  compiled = lowered.compile()

  s1, _ = compiled(state0, batch, rng, controls)
  keep = np.array([True, False])
  s2, metrics = compiled(s1, batch, rng, {**controls, "keep": keep})
  assert np.isfinite(float(metrics["train_loss"]))
  old_p, new_p = layer_leaves(s1.params), layer_leaves(s2.params)
  # Unmasked (the paper's BERT): the dropped layer got a zero gradient, but AdamW's momentum and
  # weight decay still moved it.
  assert all(not np.array_equal(new_p[k][1], old_p[k][1]) for k in new_p if "kernel" in k)

  masked = ld.masked_update(s2, s1, keep)
  for tree in ("params", "opt_state"):
    old, new, got = (layer_leaves(getattr(s, tree)) for s in (s1, s2, masked))
    assert len(got) >= len(layer_leaves(s1.params))
    for k in got:
      np.testing.assert_array_equal(got[k][1], old[k][1], err_msg=k)  # dropped: unchanged
      np.testing.assert_array_equal(got[k][0], new[k][0], err_msg=k)  # kept: updated
  # Everything outside the stacked layers comes from the new state (embeddings, count, lr).
  nonlayer = lambda t: [
    x
    for p, x in jax.tree_util.tree_flatten_with_path(t)[0]
    if not any(getattr(k, "key", None) == "layers" for k in p)
  ]
  assert _tree_equal(nonlayer(masked.params), nonlayer(s2.params))
  assert _tree_equal(nonlayer(masked.opt_state), nonlayer(s2.opt_state))
  assert int(masked.step) == 2
  # keep all True: masked_update is the identity on the new state.
  assert _tree_equal(ld.masked_update(s2, s1, np.ones(2, bool)), s2)


def test_wrap_train_step_follows_the_switch():
  """`wrap_train_step` masks dropped layers only with mask_dropped_updates=True."""

  def fake_step(state, batch, rng, controls):
    del batch, rng, controls
    return state.replace(step=state.step + 1, params=jax.tree.map(lambda x: x + 1, state.params)), {
      "train_loss": 0.0
    }

  params = {"encoder": {"layers": {"w": jnp.zeros((3, 2))}}, "embed": jnp.zeros(4)}
  state = state_lib.TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state={"mu": jax.tree.map(jnp.zeros_like, params)},
    method_state={},
  )
  keep = np.array([True, False, True])
  for mask in (True, False):
    method = build_method(
      tiny_config(
        "bert",
        "size=tiny,method=layer_drop",
        **{"method.mask_dropped_updates": mask, "model.num_layers": 3},
      )
    )
    new, _ = method.wrap_train_step(fake_step)(state, None, None, {"keep": keep})
    w = np.asarray(new.params["encoder"]["layers"]["w"])
    np.testing.assert_array_equal(w[:, 0], [1, 0, 1] if mask else [1, 1, 1])
    np.testing.assert_array_equal(new.params["embed"], np.ones(4))
    assert int(new.step) == 1
  # No keep vector (a baseline step): unchanged behaviour.
  new, _ = ld.mask_dropped_train_step(fake_step)(state, None, None, {})
  np.testing.assert_array_equal(new.params["encoder"]["layers"]["w"], np.ones((3, 2)))


# ---- end to end ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family, num_layers", [("bert", 4), ("t5", None)])
def test_layer_drop_takes_more_steps_than_baseline(family, num_layers):
  baseline, _ = run_summary(family, "baseline", num_layers)
  dropped, records = run_summary(family, "layer_drop", num_layers)
  assert dropped["stopped_because"] == baseline["stopped_because"] == "budget"
  assert dropped["steps"] > baseline["steps"]
  assert (
    np.isfinite(dropped["final_train_loss"]) and dropped["final_depth"] == baseline["final_depth"]
  )
  train = [r for r in records if "train_loss" in r]
  assert len(train) == dropped["steps"]
  L = dropped["final_depth"]
  levels = [r["drop_level"] for r in train]
  assert levels[0] == 0.0 and all(b >= a for a, b in zip(levels, levels[1:])) and levels[-1] > 0.4
  assert all(0 <= r["active_layers"] <= L for r in train)
  assert any(r["active_layers"] < L for r in train)
