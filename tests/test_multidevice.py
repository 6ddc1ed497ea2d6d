"""8 simulated CPU devices (data × fsdp × tensor = 2×2×2) give the losses of one device."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_eight_devices_match_one_device(tmp_path, family):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.run(
    [sys.executable, str(REPO / "tests" / "multidevice_steps.py"), family, str(tmp_path)],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert len(result["multi"]) == 3
  np.testing.assert_allclose(result["multi"], result["single"], rtol=1e-5)
  assert result["multi"][-1] < result["multi"][0]
