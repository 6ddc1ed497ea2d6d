#!/usr/bin/env bash
# Multi-process GPU (or CPU) training without a cluster manager: jax.distributed is configured by
# the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables that launch/common.py
# reads. Run the same command on every host, each with its PROCESS_ID:
#
#   # host 0 (its address must be reachable from the others; the port must be free there)
#   COORDINATOR=10.0.0.1:12345 NUM_PROCESSES=2 PROCESS_ID=0 launch/tpu_vm/gpu_multiprocess.sh \
#       --config=configs/bert.py:size=base --workdir=/shared/runs/bert-base
#   # host 1
#   COORDINATOR=10.0.0.1:12345 NUM_PROCESSES=2 PROCESS_ID=1 launch/tpu_vm/gpu_multiprocess.sh \
#       --config=configs/bert.py:size=base --workdir=/shared/runs/bert-base
#
# Each process uses every GPU of its host (one process per host). LOCAL_PROCESSES=N instead starts
# N processes on this host, process i on GPU i (JAX_LOCAL_DEVICE_IDS=i) and waits for them all:
#
#   LOCAL_PROCESSES=8 launch/tpu_vm/gpu_multiprocess.sh --config=... --workdir=runs/x
#   LOCAL_PROCESSES=2 PLATFORM=cpu CPU_DEVICES=4 launch/tpu_vm/gpu_multiprocess.sh ...  # CPU check
#
# The --workdir must be on storage every process sees (one host: any local path). Prints the
# command of each process; worker 0 prints progress, others write to LOG_DIR (default runs/logs).
# Variables: COORDINATOR (default localhost:<free port>), NUM_PROCESSES, PROCESS_ID,
# LOCAL_PROCESSES, PLATFORM (cuda|cpu), CPU_DEVICES, MODULE (launch.pretrain), LOG_DIR.
set -euo pipefail
: "${MODULE:=launch.pretrain}"
: "${LOG_DIR:=runs/logs}"
: "${PLATFORM:=}"
: "${CPU_DEVICES:=}"
if [ -n "$PLATFORM" ]; then export JAX_PLATFORMS="$PLATFORM"; fi
if [ -n "$CPU_DEVICES" ]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$CPU_DEVICES"
fi

if [ -n "${LOCAL_PROCESSES:-}" ]; then
  port=$(python -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')
  export JAX_COORDINATOR_ADDRESS="${COORDINATOR:-localhost:$port}"
  export JAX_NUM_PROCESSES="$LOCAL_PROCESSES"
  mkdir -p "$LOG_DIR"
  pids=()
  for ((i = 0; i < LOCAL_PROCESSES; i++)); do
    if [ "$PLATFORM" != "cpu" ]; then export JAX_LOCAL_DEVICE_IDS="$i"; fi
    echo "process $i: JAX_PROCESS_ID=$i python -m $MODULE $*"
    if [ "$i" = 0 ]; then
      JAX_PROCESS_ID=$i python -m "$MODULE" "$@" &
    else
      JAX_PROCESS_ID=$i python -m "$MODULE" "$@" > "$LOG_DIR/process-$i.log" 2>&1 &
    fi
    pids+=($!)
  done
  trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
  status=0
  for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
  exit "$status"
fi

export JAX_COORDINATOR_ADDRESS="${COORDINATOR:?set COORDINATOR=host0:port (or LOCAL_PROCESSES=N)}"
export JAX_NUM_PROCESSES="${NUM_PROCESSES:?set NUM_PROCESSES}"
export JAX_PROCESS_ID="${PROCESS_ID:?set PROCESS_ID (0 .. NUM_PROCESSES-1)}"
echo "process $JAX_PROCESS_ID of $JAX_NUM_PROCESSES (coordinator $JAX_COORDINATOR_ADDRESS): python -m $MODULE $*"
exec python -m "$MODULE" "$@"
