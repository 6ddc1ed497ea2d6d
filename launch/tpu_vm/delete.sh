#!/usr/bin/env bash
# Deletes the TPU VM $TPU_NAME (fetch the results first: fetch.sh). Prints "Deleted TPU_NAME".
#
#   launch/tpu_vm/delete.sh
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$HERE/env.sh"
# shellcheck disable=SC2046
run_cmd gcloud compute tpus tpu-vm delete "$TPU_NAME" $(gcloud_tpu_flags) --quiet
echo "Deleted $TPU_NAME"
