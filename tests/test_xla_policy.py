"""The width-keyed XLA flag policy: which flags a width gets, that the user's own XLA_FLAGS win,
the off switch, and that `launch.pretrain` applies it before JAX starts."""

import json

from conftest import run_module

from ntng_jax import xla_policy


def test_only_the_measured_widths_get_eigen_dots():
  assert xla_policy.flags_for(256) == [xla_policy.EIGEN_DOTS]  # BERT/T5 small
  assert xla_policy.flags_for(128) == [xla_policy.EIGEN_DOTS]
  assert xla_policy.flags_for(64) == []  # tiny: no gain, numerics kept
  assert xla_policy.flags_for(768) == []  # base: slower with Eigen


def test_apply_adds_once_and_keeps_other_flags():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  assert xla_policy.apply(256, env) == [xla_policy.EIGEN_DOTS]
  assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8 " + xla_policy.EIGEN_DOTS
  assert xla_policy.apply(256, env) == []  # already there
  assert env["XLA_FLAGS"].count("ynn_fusion_type") == 1
  env = {}
  assert xla_policy.apply(1024, env) == [] and "XLA_FLAGS" not in env


def test_the_users_flag_and_the_off_switch_win():
  env = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=-reduce"}
  assert xla_policy.apply(256, env) == []
  assert env["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=-reduce"
  env = {xla_policy.OFF_SWITCH: "off"}
  assert xla_policy.apply(256, env) == [] and "XLA_FLAGS" not in env


def test_pretrain_sets_the_flag_before_jax_starts(tmp_path):
  """The run's summary records the XLA_FLAGS its process ran with."""
  width = [
    "--config.model.hidden_size=256",
    "--config.model.head_dim=128",
    "--config.train.max_steps=1",
    "--config.data.num_lines=2000",
  ]
  run_module("launch.pretrain", f"--workdir={tmp_path}/on", *width, env={"XLA_FLAGS": ""})
  summary = json.loads((tmp_path / "on" / "summary.json").read_text())
  assert summary["xla_flags"].split() == [xla_policy.EIGEN_DOTS]
