#!/usr/bin/env bash
# The accelerator suite (issue 17): one GPU or TPU host, at most 8 minutes, one JSON.
#   benchmarks/accelerator_suite.sh [OUT.json] [extra flags of accelerator_suite.py]
#   benchmarks/accelerator_suite.sh /tmp/smoke.json --smoke     # every item, tiny shapes, CPU
# The persistent compilation cache ($NTNG_XLA_CACHE, default /tmp/ntng_jax_xla_cache) makes a
# rerun within the same lease skip most compiles. Items that would start after --budget_s (450 s)
# are marked skipped; `timeout` is the hard stop at 8 minutes (the JSON holds every finished item).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
OUT=${1:-accelerator_suite.json}
shift || true
CACHE=${NTNG_XLA_CACHE:-/tmp/ntng_jax_xla_cache}
exec timeout --signal=INT --kill-after=15 480 \
  python benchmarks/accelerator_suite.py --out="$OUT" --cache_dir="$CACHE" "$@"
