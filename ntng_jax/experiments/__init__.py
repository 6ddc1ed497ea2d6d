"""Experiments: sweeps over methods × RST budgets × seeds (`sweep`) and their reports (`report`).

Neither module imports jax: a sweep drives `python -m launch.pretrain` subprocesses (which own the
accelerators) and a report reads the files those runs wrote.
"""
