"""Sweeps and reports: planning and commands, the sweep driver against a stub interpreter (IL model,
extraction, fine-tuning, failures, divergence, skip-on-rerun), and one real end-to-end tiny grid
(`launch.sweep` then `launch.report`)."""

import json
import os
import re
import signal
import stat
import sys
import textwrap
import threading
import time

import pytest
from conftest import REPO, run_module

sys.path.insert(0, str(REPO))
from ntng_jax.experiments import commands as cmds  # noqa: E402
from ntng_jax.experiments import eta, grid, report, run_files, sweep  # noqa: E402


def _spec(root, **kw):
  args = dict(
    config="configs/bert.py:size=tiny",
    methods=["baseline", "lion"],
    budgets=[0.002, 0.004],
    seeds=[0],
    root=str(root),
  )
  args.update(kw)
  return grid.SweepSpec(**args)


# -------------------------------------------------------------------------------------------------
# Planning.


def test_plan_commands_and_validation(tmp_path):
  spec = _spec(
    tmp_path,
    methods=["baseline", "rho_loss"],
    seeds=[0, 1],
    finetune=["glue"],
    finetune_args=["--tasks=rte", "--epochs=1"],
    extra=["--config.data.num_lines=99"],
  )
  runs = grid.plan(spec)
  assert len(runs) == 8 and runs[0].key == "baseline/budget-0.002/seed-0"
  assert runs[-1].workdir == os.path.join(str(tmp_path), "rho_loss", "budget-0.004", "seed-1")
  assert grid.parse_run_dir(runs[-1].workdir) == ("rho_loss", 0.004, 1)
  cmd = cmds.pretrain_command(spec, runs[1], il_path="/il.npy", python="python")
  assert cmd[:3] == ["python", "-m", "launch.pretrain"]
  assert "--config=configs/bert.py:size=tiny,method=rho_loss,seed=0" in cmd
  assert "--config.train.budget_hours=0.002" in cmd and "--config.method.il_path=/il.npy" in cmd
  assert f"--config.rst.table={tmp_path}/rst_table.json" in cmd
  assert "--config.data.num_lines=99" in cmd

  lines = cmds.dry_run_lines(spec)
  commands = [l for l in lines if not l.startswith("#")]
  assert commands[0].startswith("python -m launch.calibrate_rst")
  assert "method=il_model" in commands[1] and "launch.extract_il" in commands[1]
  il_losses = os.path.join(str(tmp_path), "il_model", "budget-0.004", "seed-0", "il_losses")
  assert f"--config.method.il_path={il_losses}" in commands[-1]
  assert len(commands) == 2 + 8
  assert all(
    "&& python -m launch.finetune" in c and "--suite=glue --tasks=rte --epochs=1" in c
    for c in commands[2:]
  )
  # One table for every run: the same --config.rst.table everywhere.
  assert len({re.search(r"--config.rst.table=(\S+)", c).group(1) for c in commands[1:]}) == 1

  for bad, msg in [
    (dict(config="configs/bert.py:size=tiny,method=lion"), "method"),
    (dict(budgets=[0.0]), "budgets"),
    (dict(methods=["baseline", "baseline"]), "twice"),
    (dict(methods=["baseline", "foo"]), "unknown method.*foo.*nothing was started"),
    (dict(methods=["stackin"]), "did you mean stacking"),
    (dict(extra=["--config.train.budget_hours=1"]), "set by the sweep"),
    (dict(rst_table="nope.json"), "rst_table"),
  ]:
    with pytest.raises(grid.SweepError, match=msg):
      grid.validate(_spec(tmp_path, **bad))
  assert grid.format_budget(24.0) == "24" and grid.format_budget(0.005) == "0.005"


def test_eta_fits_startup_and_rate():
  est = eta.Eta()
  assert est.remaining([1.0]) is None
  est.add(1.0, 70.0)
  assert est.predict(2.0) == pytest.approx(140.0)
  est.add(2.0, 130.0)  # 10 s start-up + 60 s per RST hour
  assert est.predict(4.0) == pytest.approx(250.0)
  est.add_extra("glue", 30.0)
  assert est.remaining([1.0, 4.0], ["glue"]) == pytest.approx(70.0 + 250.0 + 30.0)


# -------------------------------------------------------------------------------------------------
# The driver, against a stub interpreter that imitates the launch scripts in milliseconds.

STUB = r"""
import json, os, re, sys
args = sys.argv[1:]
assert args[0] == "-m", args
module, flags = args[1], args[2:]
def flag(name):
  for f in flags:
    if f.startswith("--" + name + "="):
      return f.split("=", 1)[1]
with open(os.environ["STUB_CALLS"], "a") as f:
  f.write(json.dumps([module] + flags) + "\n")
if module == "launch.calibrate_rst":
  out = flag("output")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  json.dump({"name": "stub-table", "meta": {"device": "cpu:stub", "date": "today"}}, open(out, "w"))
  print("Wrote %s." % out)
elif module == "launch.pretrain":
  config = flag("config")
  method = re.search(r"method=(\w+)", config).group(1)
  seed = int(re.search(r"seed=(\d+)", config).group(1))
  budget = float(flag("config.train.budget_hours"))
  wd = flag("workdir")
  assert flag("config.rst.table"), "no shared table"
  if method == "stacking":
    print("Traceback (most recent call last):")
    print("NotImplementedError: method 'stacking' is not available in this build.")
    sys.exit(1)
  if method == "rho_loss":
    il = flag("config.method.il_path")
    if not il or not os.path.exists(il):
      print("error: no IL losses at %r" % il)
      sys.exit(2)
  os.makedirs(wd, exist_ok=True)
  fields = {"method.name": method, "seed": seed, "train.budget_hours": budget}
  for f in flags:  # like run.json: what the command set, less what a resume may change
    if f.startswith("--config.") and not f.startswith("--config.rst.table="):
      key, value = f[len("--config."):].split("=", 1)
      try:
        fields[key] = json.loads(value)
      except ValueError:
        fields[key] = value
  json.dump({"fields": fields}, open(os.path.join(wd, "run.json"), "w"))
  if method == "slow":  # runs until SIGTERM, then "checkpoints" and exits like the trainer
    import signal, time
    def term(*_):
      json.dump({"stopped_because": "interrupt", "steps": 3},
                open(os.path.join(wd, "summary.json"), "w"))
      sys.exit(0)
    signal.signal(signal.SIGTERM, term)
    open(os.path.join(wd, "started"), "w").close()
    for _ in range(300):
      time.sleep(0.1)
    sys.exit(3)
  offset = {"baseline": 0.0, "lion": 0.1, "rho_loss": 0.2}.get(method, 0.0)
  final = 5.0 - 100 * budget + offset + 0.01 * seed
  n = 20 if method != "diverge" else 8
  with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
    for i in range(1, n + 1):
      f.write(json.dumps({"step": i, "rst_seconds": i / 20 * budget * 3600,
                          "train_loss": 7.0 - (7.0 - final) * min(1.0, i / 18)}) + "\n")
  summary = {"method": method, "steps": n, "rst_seconds": n / 20 * budget * 3600,
             "final_train_loss": final, "final_validation_loss": final + 0.1,
             "final_validation_losses": {"c4": final + 0.1, "minipile": final + 0.3}}
  if method == "diverge":
    summary.update(stopped_because="nan", final_train_loss=6.0, final_validation_loss=None)
    json.dump(summary, open(os.path.join(wd, "summary.json"), "w"))
    print("error: the training loss became nan at step 9")
    sys.exit(1)
  summary["stopped_because"] = "budget"
  json.dump(summary, open(os.path.join(wd, "summary.json"), "w"))
  print("Finished: budget")
elif module == "launch.extract_il":
  path = os.path.join(flag("workdir"), "il_losses.npy")
  open(path, "w").write("stub")
  print("Wrote %s." % path)
elif module == "launch.finetune":
  wd, suite = flag("pretrained"), flag("suite")
  s = json.load(open(os.path.join(wd, "summary.json")))
  score = 80.0 - 10 * s["final_train_loss"]
  os.makedirs(os.path.join(wd, "finetune"), exist_ok=True)
  json.dump({"average": {"average": score, "missing": ["cola/mcc"]},
             "best": {"rte": {"accuracy": score - 1}, "mrpc": {"f1": score + 1}},
             "tasks": {"rte": {"majority_rate": 50.0}}},
            open(os.path.join(wd, "finetune", suite + ".json"), "w"))
else:
  sys.exit("unknown module " + module)
"""


@pytest.fixture()
def stub(tmp_path, monkeypatch):
  path = tmp_path / "stub_python"
  path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(STUB))
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  calls = tmp_path / "calls.jsonl"
  monkeypatch.setenv("STUB_CALLS", str(calls))
  # The stub's own method names (a diverging and a slow run) join the real ones.
  known = grid.known_methods()
  monkeypatch.setattr(grid, "known_methods", lambda: known + ("diverge", "slow"))

  def read_calls():
    if not calls.exists():
      return []
    out = [json.loads(l) for l in calls.read_text().splitlines()]
    calls.unlink()
    return out

  return str(path), read_calls


def test_sweep_driver_and_report_with_stub(tmp_path, stub):
  python, calls = stub
  root = tmp_path / "sweep"
  spec = _spec(
    root,
    methods=["baseline", "lion", "stacking", "rho_loss", "diverge"],
    seeds=[0, 1],
    finetune=["glue"],
    finetune_args=["--tasks=rte"],
  )
  log = open(tmp_path / "out.txt", "w+")
  status = sweep.Sweep(spec, out=log, python=python).run()
  made = calls()
  modules = [c[0] for c in made]
  assert modules[:3] == ["launch.calibrate_rst", "launch.pretrain", "launch.extract_il"]
  assert "method=il_model" in made[1][1]
  assert modules.count("launch.pretrain") == 1 + 20
  # Fine-tuning only for runs that completed: baseline, lion, rho_loss x 2 budgets x 2 seeds.
  assert modules.count("launch.finetune") == 12
  runs = status["runs"]
  assert runs["baseline/budget-0.002/seed-0"]["status"] == "done"
  assert runs["stacking/budget-0.004/seed-1"]["status"] == "failed"
  assert "NotImplementedError" in runs["stacking/budget-0.004/seed-1"]["error"]
  assert runs["diverge/budget-0.002/seed-0"]["status"] == "diverged"
  assert runs["rho_loss/budget-0.002/seed-0"]["status"] == "done"
  assert status["il_model"]["il_path"].endswith("il_losses.npy")
  assert status["counts"] == {"done": 12, "diverged": 4, "failed": 4}
  log.seek(0)
  text = log.read()
  assert "[20/20]" in text and "ETA" in text and "FAILED" in text
  with open(root / "sweep_status.json") as f:
    assert json.load(f)["counts"]["failed"] == 4

  # Re-running skips complete and diverged runs (and existing fine-tuning results); it retries
  # only the failed ones.
  status = sweep.Sweep(spec, out=open(os.devnull, "w"), python=python).run()
  again = calls()
  assert [c[0] for c in again] == ["launch.pretrain"] * 4
  assert all("method=stacking" in c[1] for c in again)

  # The report.
  result = report.write_report(str(root))
  md = open(result["markdown"]).read()
  for name in ("train_loss", "validation_loss", "downstream"):
    assert os.path.getsize(result["figures"][name]) > 1000
  agg = result["aggregate"]
  assert agg["methods"][0] == "baseline"
  assert set(agg["methods"]) == {"baseline", "lion", "stacking", "rho_loss", "diverge"}
  lion = agg["groups"][("lion", 0.002)]["metrics"]
  assert lion["train_loss"]["delta"] == pytest.approx(0.1)
  assert lion["train_loss"]["n"] == 2
  assert lion["train_loss"]["std"] == pytest.approx(0.01 / 2**0.5)
  assert lion["glue/average"]["delta"] == pytest.approx(-1.0)
  assert "validation_loss/minipile" in lion
  assert agg["groups"][("stacking", 0.004)]["counts"] == {"failed": 2}
  table = md[md.index("### Final training loss") :]
  table = table[: table.index("\n\n", table.index("|"))]
  assert "| stacking | **2 failed** | **2 failed** |" in table
  assert "| diverge | **2 diverged** | **2 diverged** |" in table
  assert "0.002 h" in table and "0.004 h" in table
  assert "GLUE average" in md and "rte/accuracy" in md
  assert "minipile" in md and "NotImplementedError" in md
  assert "fig_train_loss.png" in md
  assert "il_model" not in agg["methods"]
  assert str(tmp_path) not in md  # paths relative to the sweep root


def test_two_sweeps_on_one_root_keep_each_others_runs(tmp_path, stub):
  """Two sweeps on one root, each over its own part of the grid (two streams on one seed's root),
  both started before either saves: neither's status overwrites the other's runs."""
  python, _ = stub
  root = tmp_path / "sweep"
  quiet = open(os.devnull, "w")
  first, second = (
    sweep.Sweep(_spec(root, methods=[m], budgets=[0.002]), out=quiet, python=python)
    for m in ("baseline", "lion")
  )
  first.run()
  second.run()
  runs = json.loads((root / "sweep_status.json").read_text())["runs"]
  assert {k: v["status"] for k, v in runs.items()} == {
    "baseline/budget-0.002/seed-0": "done",
    "lion/budget-0.002/seed-0": "done",
  }


def test_a_finished_run_with_other_settings_is_refused_not_skipped(tmp_path, stub):
  """Re-running a sweep with another --extra value (a new learning rate) on a root whose runs
  finished: those runs fail with one sentence naming the field, and nothing is re-run or
  overwritten; with the original value they are skipped as complete."""
  python, calls = stub
  root = tmp_path / "sweep"
  quiet = open(os.devnull, "w")
  lr = lambda v: _spec(
    root, methods=["baseline"], budgets=[0.002], extra=[f"--config.optim.lr={v}"]
  )
  sweep.Sweep(lr("2e-2"), out=quiet, python=python).run()
  calls()
  status = sweep.Sweep(lr("4e-2"), out=quiet, python=python).run()
  assert calls() == []
  entry = status["runs"]["baseline/budget-0.002/seed-0"]
  assert entry["status"] == "failed"
  assert "optim.lr 0.02 → 4e-2" in entry["error"] and "another --root" in entry["error"]
  assert status["counts"] == {"done": 0, "diverged": 0, "failed": 1}
  status = sweep.Sweep(lr("0.02"), out=quiet, python=python).run()
  assert calls() == [] and status["counts"]["done"] == 1


def test_sigterm_is_forwarded_and_stops_the_sweep(tmp_path, stub):
  python, _ = stub
  root = tmp_path / "sweep"
  spec = _spec(root, methods=["slow", "baseline"], budgets=[0.002])
  marker = root / "slow" / "budget-0.002" / "seed-0" / "started"

  def terminate_when_started():
    deadline = time.time() + 30
    while not marker.exists() and time.time() < deadline:
      time.sleep(0.05)
    if marker.exists():  # the sweep's handler is installed before the run starts
      os.kill(os.getpid(), signal.SIGTERM)

  threading.Thread(target=terminate_when_started, daemon=True).start()
  with pytest.raises(sweep.SweepInterrupted):
    sweep.Sweep(spec, out=open(os.devnull, "w"), python=python).run()
  status = json.loads((root / "sweep_status.json").read_text())
  assert status["runs"]["slow/budget-0.002/seed-0"]["status"] == "interrupted"
  assert status["runs"]["baseline/budget-0.002/seed-0"]["status"] == "pending"
  assert run_files.read_summary(str(marker.parent))["stopped_because"] == "interrupt"


ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/-])/[\w.~-]")


def test_report_names_no_absolute_path(tmp_path, stub, monkeypatch):
  """A sweep run from its own directory, then moved: the report still finds the RST table, and
  every path in report.md and report.json is relative to the sweep root (issue 20.7)."""
  python, _ = stub
  monkeypatch.chdir(tmp_path)
  missing_il = tmp_path / "nowhere" / "il.npy"  # absolute, outside the root: rho_loss fails
  spec = _spec("sweep", methods=["baseline", "rho_loss"], budgets=[0.002], il_path=str(missing_il))
  sweep.Sweep(spec, out=open(os.devnull, "w"), python=python).run()
  (tmp_path / "sweep").rename(tmp_path / "moved")
  monkeypatch.chdir("/")
  result = report.write_report(str(tmp_path / "moved"), figures=False)
  md = open(result["markdown"]).read()
  assert "stub-table" in md and "`rst_table.json`" in md
  assert "no IL losses at '../nowhere/il.npy'" in md
  assert str(tmp_path) not in md and not ABSOLUTE_PATH.search(md), md
  runs = json.load(open(result["json"]))["runs"]
  assert sorted(r["workdir"] for r in runs) == [
    "baseline/budget-0.002/seed-0",
    "rho_loss/budget-0.002/seed-0",
  ]


def test_report_lists_an_unfinished_grid(tmp_path):
  """A grid run from --dry_run commands (no status file): a run still going is incomplete."""
  wd = tmp_path / "baseline" / "budget-0.5" / "seed-0"
  wd.mkdir(parents=True)
  (wd / "metrics.jsonl").write_text(
    json.dumps({"step": 1, "rst_seconds": 3.0, "train_loss": 7.0}) + "\n"
  )
  result = report.write_report(str(tmp_path), figures=False)
  assert [r["status"] for r in result["collected"]["runs"]] == ["incomplete"]
  assert "| baseline | **1 incomplete** |" in open(result["markdown"]).read()


# -------------------------------------------------------------------------------------------------
# End to end: the real launch scripts on a tiny grid (about 2 minutes on two idle cores).


@pytest.mark.slow
def test_sweep_then_report_end_to_end(tmp_path):
  root = tmp_path / "sweep"
  args = [
    "--config=configs/bert.py:size=tiny",
    "--methods=baseline,lion",
    "--budgets=0.002,0.003",
    "--seeds=0",
    f"--root={root}",
    "--extra=--config.data.num_lines=4000",
    "--extra=--config.rst.repeats=1 --config.rst.warmup=1",
  ]
  # An unknown method is refused before anything starts (no calibration, no run, no root).
  proc = run_module(
    "launch.sweep", *[a.replace("baseline,lion", "baseline,lion,bogus") for a in args], check=False
  )
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
  assert "unknown method(s) bogus" in proc.stderr and not root.exists()

  dry = run_module("launch.sweep", *args, "--dry_run")
  commands = [l for l in dry.stdout.splitlines() if l and not l.startswith("#")]
  assert len(commands) == 1 + 4 and not root.exists()

  # From another working directory: the shipped config is found relative to the package.
  proc = run_module("launch.sweep", *args, check=False, timeout=900, cwd=tmp_path)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "Sweep finished: 4 done, 0 diverged, 0 failed" in proc.stdout, proc.stdout[-3000:]
  assert (root / "rst_table.json").exists()
  status = json.loads((root / "sweep_status.json").read_text())
  for m in ("baseline", "lion"):
    for b in ("0.002", "0.003"):
      summary = json.loads((root / m / f"budget-{b}" / "seed-0" / "summary.json").read_text())
      assert summary["stopped_because"] == "budget"
      assert summary["rst_table"] == json.loads((root / "rst_table.json").read_text())["name"]
      assert status["runs"][f"{m}/budget-{b}/seed-0"]["status"] == "done"

  proc = run_module("launch.report", f"--root={root}")
  md = (root / "report.md").read_text()
  for fig in ("fig_train_loss.png", "fig_validation_loss.png"):
    assert (root / fig).stat().st_size > 1000
    assert fig in md
  table = md[md.index("### Final training loss") :]
  table = table[: table.index("\n\n", table.index("|"))]
  assert "0.002 h" in table and "0.003 h" in table
  assert re.search(r"\| baseline \| \d\.\d{4} \| \d\.\d{4} \|", table), table
  assert re.search(r"\| lion \| \d\.\d{4} \(Δ [+-]\d\.\d{4}\) \|", table), table
  assert "Final validation loss" in md

  # Again: the trainer's run.json matches the sweep's flags, so every run is skipped; with another
  # learning rate every run is refused (exit 1), none re-run.
  proc = run_module("launch.sweep", *args, check=False, cwd=tmp_path)
  assert "Sweep finished: 4 done, 0 diverged, 0 failed" in proc.stdout, proc.stdout[-3000:]
  other = run_module(
    "launch.sweep", *args, "--extra=--config.optim.learning_rate=0.5", check=False, cwd=tmp_path
  )
  assert other.returncode == 1 and other.stdout.count("finished with other settings") == 4
  assert "optim.learning_rate" in other.stdout and "→ 0.5" in other.stdout
