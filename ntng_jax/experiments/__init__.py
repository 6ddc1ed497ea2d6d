"""Experiments: sweeps over methods × RST budgets × seeds and their reports, without jax.

Sweep: `grid` (what to run, where) → `commands` (the launch-script command lines) → `sweep` (the
driver, with `runner` for subprocesses, `eta`, `run_files`). Report: `results` (load runs) →
`stats` (aggregate) → `tables` / `figures` → `report`; `finetune_results` owns the fine-tuning
result file. RST comparisons: `rst_compare`, `rst_depthwise`.
"""
