#!/usr/bin/env bash
# Starts `python -m $MODULE ARGS...` (default launch.pretrain) on every worker of $TPU_NAME
# (--worker=all), detached from the ssh session, and follows worker 0's output.
#
#   launch/tpu_vm/run.sh --config=configs/bert.py:size=base --workdir=runs/bert-base
#   launch/tpu_vm/run.sh --config=configs/t5.py:size=base,method=stacking \
#       --config.mesh.fsdp=-1 --config.mesh.data=1 --workdir=/mnt/shared/runs/t5-stacking  # pod
#   WORKER=0 MODULE=launch.sweep launch/tpu_vm/run.sh --config=configs/bert.py:size=base \
#       --methods=baseline,stacking --budgets=6,12,24 --seeds=0,1,2 --rst_table=paper \
#       --root=sweeps/bert-base                                   # a sweep on a one-host TPU VM
#
# Every host runs the same command; jax.distributed starts by itself on a multi-host slice (this
# script sets NTNG_DISTRIBUTED=auto there) and each process reads its share of every global batch.
# Multi-host runs need a --workdir on a directory every worker shares (SHARED_MOUNT in setup.sh).
# The same command again resumes from the last checkpoint.
#
# Prints one line per worker ("worker 1: started pid 4242, log ~/ntng-logs/RUN.worker-1.log"), then
# worker 0's log until the run ends (Ctrl-C stops following, not the run; FOLLOW=0 skips it).
# Stop a run with launch/tpu_vm/stop.sh RUN_NAME. Variables: MODULE, WORKER (all), RUN_NAME
# (default: the current time), FOLLOW (1), and those of env.sh.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$HERE/env.sh"
: "${MODULE:=launch.pretrain}"
: "${WORKER:=all}"
: "${RUN_NAME:=$(date +%Y%m%d-%H%M%S)}"
: "${FOLLOW:=1}"

args=""
for a in "$@"; do args+=" $(printf '%q' "$a")"; done

# On the worker: its number from the metadata server, the number of hosts, then a detached start.
start="$(remote_prologue)
md=http://metadata.google.internal/computeMetadata/v1/instance/attributes
id=\$(curl -sf -H Metadata-Flavor:Google \$md/agent-worker-number || echo 0)
eps=\$(curl -sf -H Metadata-Flavor:Google \$md/worker-network-endpoints || true)
hosts=\$(echo \"\$eps\" | tr ',' '\n' | grep -c . || true)
if [ \"\$hosts\" -gt 1 ] && [ '$WORKER' = all ]; then export NTNG_DISTRIBUTED=auto; fi
mkdir -p \"\$HOME/$LOG_DIR\"
log=\"\$HOME/$LOG_DIR/$RUN_NAME.worker-\$id.log\"
echo \"\$ python -m $MODULE$args\" > \"\$log\"
nohup setsid python -m $MODULE$args >> \"\$log\" 2>&1 < /dev/null &
echo \$! > \"\$HOME/$LOG_DIR/$RUN_NAME.worker-\$id.pid\"
echo \"worker \$id: started pid \$!, log ~/$LOG_DIR/$RUN_NAME.worker-\$id.log\""

echo "Starting python -m $MODULE$args on worker(s) $WORKER of $TPU_NAME (run $RUN_NAME) ..."
tpu_ssh "$WORKER" "$start"

if [ "$FOLLOW" = "1" ]; then
  first="$WORKER"; [ "$WORKER" = all ] && first=0
  echo "Following worker $first (Ctrl-C stops following; the run goes on) ..."
  tpu_ssh "$first" "log=\$HOME/$LOG_DIR/$RUN_NAME.worker-$first.log
    tail -n +1 -f --pid=\$(cat \$HOME/$LOG_DIR/$RUN_NAME.worker-$first.pid) \$log" || true
fi
echo "Run $RUN_NAME: logs in ~/$LOG_DIR/ on each worker; results: launch/tpu_vm/fetch.sh WORKDIR"
