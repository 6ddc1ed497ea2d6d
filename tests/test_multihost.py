"""Scale-out on one machine: two jax.distributed processes × 4 CPU devices train like one × 8.

Both runs use the real trainer (`train_and_evaluate`) on a (data, fsdp, tensor) = (2, 2, 2) mesh and
one fixed RST table. The two-process run stops after 4 steps (max_steps) and is then resumed by two
fresh processes from the orbax checkpoint they saved together, to the end of the budget; its
training and validation losses must equal the uninterrupted one-process run's within 1e-5.
Workers: tests/multihost_worker.py. About a minute on two idle cores.
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "tests"))
import multihost_worker  # noqa: E402

WORKER = str(REPO / "tests" / "multihost_worker.py")
TIMEOUT_S = 420


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(args, log_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # the worker sets its own device count
  log = open(log_path, "w")
  return subprocess.Popen(
    [sys.executable, WORKER, *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
  ), log


def _wait_all(procs: list, deadline: float) -> list[dict]:
  """Waits for every process; once one fails (or time is up) the others are killed, since they
  would otherwise wait for it in a collective until jax.distributed's heartbeat timeout."""
  while True:
    codes = [p.poll() for p, _ in procs]
    if all(c is not None for c in codes):
      break
    if any(c not in (None, 0) for c in codes) or time.time() > deadline:
      for p, _ in procs:
        if p.poll() is None:
          p.kill()
      break
    time.sleep(0.5)
  results = []
  for p, log in procs:
    p.wait()
    log.close()
    text = open(log.name).read()
    assert p.returncode == 0, f"{log.name} exited with {p.returncode}:\n{text[-4000:]}"
    results.append(json.loads(text.strip().splitlines()[-1]))
  return results


def _train_records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    recs = [json.loads(line) for line in f]
  return [r for r in recs if "train_loss" in r], [r for r in recs if "validation_loss" in r]


def _two_processes(tmp_path, table, workdir, tag, max_steps):
  port = _free_port()
  return [
    _start(
      [
        "--workdir",
        workdir,
        "--table",
        table,
        "--devices",
        "4",
        "--num_processes",
        "2",
        "--process_id",
        str(i),
        "--port",
        str(port),
        "--max_steps",
        str(max_steps),
      ],
      tmp_path / f"{tag}-p{i}.log",
    )
    for i in range(2)
  ]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  deadline = time.time() + TIMEOUT_S
  table = str(tmp_path / "rst_table.json")
  multihost_worker.write_table(table)
  single, multi = str(tmp_path / "single"), str(tmp_path / "multi")

  # Phase 1: the one-process reference (8 devices, to the budget) alongside the first 4 steps of
  # the two-process run.
  ref = _start(["--workdir", single, "--table", table, "--devices", "8"], tmp_path / "single.log")
  first = _wait_all([*_two_processes(tmp_path, table, multi, "first", 4), ref], deadline)
  assert [r["process_count"] for r in first] == [2, 2, 1]
  assert all(r["device_count"] == 8 for r in first)
  assert [r["summary"]["stopped_because"] for r in first] == ["max_steps", "max_steps", "budget"]
  assert os.path.exists(os.path.join(multi, "checkpoints", "4", "manifest.json"))

  # Phase 2: two fresh processes resume from the checkpoint both wrote, to the end of the budget.
  second = _wait_all(_two_processes(tmp_path, table, multi, "resume", 0), deadline)
  for i in range(2):
    assert "Resuming from step 4" in (tmp_path / f"resume-p{i}.log").read_text()
  s_multi, s_single = second[0]["summary"], first[2]["summary"]
  same = lambda s: {k: v for k, v in s.items() if k != "wall_seconds"}
  assert same(second[1]["summary"]) == same(s_multi)  # every process computes the same summary
  assert s_multi["steps"] == s_single["steps"] == 10
  with open(os.path.join(multi, "summary.json")) as f:  # written by process 0 only
    assert json.load(f)["steps"] == 10

  train_m, val_m = _train_records(multi)
  train_s, val_s = _train_records(single)
  # Only process 0 writes metrics: one record per logged step, none twice.
  assert [r["step"] for r in train_m] == list(range(1, 11))
  np.testing.assert_allclose(
    [r["train_loss"] for r in train_m], [r["train_loss"] for r in train_s], rtol=0, atol=1e-5
  )
  val_m = {r["step"]: r["validation_loss"] for r in val_m}  # + step 4: the end of phase 1
  val_s = {r["step"]: r["validation_loss"] for r in val_s}
  assert set(val_s) <= set(val_m)
  np.testing.assert_allclose(
    [val_m[s] for s in sorted(val_s)], [val_s[s] for s in sorted(val_s)], rtol=0, atol=1e-5
  )
  np.testing.assert_allclose(
    s_multi["final_validation_loss"], s_single["final_validation_loss"], rtol=0, atol=1e-5
  )
  assert train_m[-1]["train_loss"] < train_m[0]["train_loss"]
