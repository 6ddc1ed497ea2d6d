#!/usr/bin/env bash
# Creates the TPU VM (or pod slice) $TPU_NAME, or reuses it if it already exists.
#
#   TPU_NAME=ntng ZONE=us-central2-b ACCELERATOR_TYPE=v4-8 RUNTIME_VERSION=tpu-ubuntu2204-base \
#     launch/tpu_vm/create.sh
#   SPOT=1 ACCELERATOR_TYPE=v4-32 launch/tpu_vm/create.sh     # a 4-host pod slice, spot capacity
#
# Prints: "Creating ..." or "Using the existing TPU VM ...", then one line per worker
# ("worker 0: 10.130.0.12") and the number of hosts. See env.sh for every variable.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$HERE/env.sh"

# shellcheck disable=SC2046
if [ "$DRY_RUN" != "1" ] && gcloud compute tpus tpu-vm describe "$TPU_NAME" $(gcloud_tpu_flags) \
    --format='value(state)' >/dev/null 2>&1; then
  echo "Using the existing TPU VM $TPU_NAME in $ZONE."
else
  echo "Creating TPU VM $TPU_NAME ($ACCELERATOR_TYPE, runtime $RUNTIME_VERSION) in $ZONE ..."
  extra=()
  if [ "$SPOT" = "1" ]; then extra+=(--spot); fi
  # shellcheck disable=SC2046
  run_cmd gcloud compute tpus tpu-vm create "$TPU_NAME" $(gcloud_tpu_flags) \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" "${extra[@]}"
fi

if [ "$DRY_RUN" = "1" ]; then exit 0; fi
# shellcheck disable=SC2046
state=$(gcloud compute tpus tpu-vm describe "$TPU_NAME" $(gcloud_tpu_flags) --format='value(state)')
# shellcheck disable=SC2046
ips=$(gcloud compute tpus tpu-vm describe "$TPU_NAME" $(gcloud_tpu_flags) \
  --format='value(networkEndpoints[].ipAddress)' | tr ';,' '  ')
echo "State: $state"
i=0
for ip in $ips; do echo "worker $i: $ip"; i=$((i + 1)); done
echo "$i host(s). Next: launch/tpu_vm/setup.sh"
