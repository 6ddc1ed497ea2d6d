#!/usr/bin/env bash
# Copies a run's (or a sweep's) results back to this machine, without checkpoints by default.
#
#   launch/tpu_vm/fetch.sh runs/bert-base                 # ~/ntng_jax/runs/bert-base on worker 0
#   launch/tpu_vm/fetch.sh /mnt/shared/sweeps/bert results/    # absolute path on worker 0
#   launch/tpu_vm/fetch.sh gs://my-bucket/sweeps/bert          # a bucket (e.g. the gcsfuse mount)
#   CHECKPOINTS=1 launch/tpu_vm/fetch.sh runs/bert-base         # checkpoints too
#
# A relative path is relative to the checkout (~/$REMOTE_DIR) on worker 0, which writes every
# metrics.jsonl, summary.json and report. The copy lands in LOCAL_DIR (default: the current
# directory) under the path's last component. Prints "Fetched SOURCE -> DEST (N files)"; then run
# `python -m launch.report --root=DEST` here if it was a sweep.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$HERE/env.sh"
SOURCE="${1:?usage: fetch.sh REMOTE_WORKDIR|gs://BUCKET/PATH [LOCAL_DIR]}"
LOCAL_DIR="${2:-.}"
: "${CHECKPOINTS:=0}"
name="$(basename "${SOURCE%/}")"
dest="$LOCAL_DIR/$name"
mkdir -p "$dest"

if [[ "$SOURCE" == gs://* ]]; then
  exclude=()
  if [ "$CHECKPOINTS" != "1" ]; then exclude=(--exclude='.*/checkpoints/.*|^checkpoints/.*'); fi
  run_cmd gcloud storage rsync --recursive "${exclude[@]}" "${SOURCE%/}" "$dest"
else
  excl=""
  if [ "$CHECKPOINTS" != "1" ]; then excl="--exclude=checkpoints"; fi
  case "$SOURCE" in /*) src="$SOURCE" ;; *) src="\$HOME/$REMOTE_DIR/$SOURCE" ;; esac
  tpu_ssh 0 "set -euo pipefail; tar -C \"\$(dirname $src)\" -czf /tmp/ntng-fetch.tgz $excl \
    \"\$(basename $src)\""
  # shellcheck disable=SC2046
  run_cmd gcloud compute tpus tpu-vm scp "$TPU_NAME:/tmp/ntng-fetch.tgz" "$LOCAL_DIR/.ntng-fetch.tgz" \
    $(gcloud_tpu_flags) --worker=0
  run_cmd tar -xzf "$LOCAL_DIR/.ntng-fetch.tgz" -C "$LOCAL_DIR"
  run_cmd rm -f "$LOCAL_DIR/.ntng-fetch.tgz"
fi
echo "Fetched $SOURCE -> $dest ($(find "$dest" -type f | wc -l) files)"
