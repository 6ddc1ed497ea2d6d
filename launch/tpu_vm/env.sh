# Shared settings of the TPU VM scripts (sourced by create.sh, setup.sh, run.sh, fetch.sh,
# delete.sh). Every value can be overridden from the environment, e.g.
#   ZONE=europe-west4-a ACCELERATOR_TYPE=v5litepod-8 RUNTIME_VERSION=v2-alpha-tpuv5-lite \
#     launch/tpu_vm/create.sh
# DRY_RUN=1 prints the gcloud commands instead of running them.

: "${TPU_NAME:=ntng-tpu}"                      # name of the TPU VM (or pod slice)
: "${ZONE:=us-central2-b}"                     # where the accelerator type is offered
: "${ACCELERATOR_TYPE:=v4-8}"                  # v4-8 = one host; v4-32 = 4 hosts; v5litepod-8 ...
: "${RUNTIME_VERSION:=tpu-ubuntu2204-base}"    # v4; v5e: v2-alpha-tpuv5-lite; v5p: v2-alpha-tpuv5;
                                               # v6e: v2-alpha-tpuv6e
: "${PROJECT:=}"                               # '' = gcloud's configured project
: "${SPOT:=0}"                                 # 1 = spot (preemptible) capacity
: "${REMOTE_DIR:=ntng_jax}"                    # checkout on every worker (relative to $HOME)
: "${VENV:=ntng-venv}"                         # virtual environment on every worker ($HOME/$VENV)
: "${PYTHON_VERSION:=3.12}"                    # used when the image's python3 is older than 3.11
: "${JAX_SPEC:=jax[tpu]>=0.10,<0.13}"          # the jax the project supports, with libtpu
: "${REPO_URL:=}"                              # git URL to clone; '' = copy this working tree
: "${REPO_REF:=main}"                          # branch/tag/commit when cloning
: "${SHARED_MOUNT:=}"                          # multi-host: shared directory on every worker
: "${NFS:=}"                                   #   ... mounted from NFS (Filestore) "IP:/share"
: "${BUCKET:=}"                                #   ... or a GCS bucket through gcsfuse
: "${LOG_DIR:=ntng-logs}"                      # run logs on every worker (relative to $HOME)
: "${DRY_RUN:=0}"

# Runs (or with DRY_RUN=1 prints) a command.
run_cmd() {
  if [ "$DRY_RUN" = "1" ]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

gcloud_tpu_flags() {
  printf -- '--zone=%s' "$ZONE"
  if [ -n "$PROJECT" ]; then printf -- ' --project=%s' "$PROJECT"; fi
}

# tpu_ssh WORKER COMMAND: runs COMMAND (a bash script string) on WORKER (a number or 'all').
tpu_ssh() {
  # shellcheck disable=SC2046
  run_cmd gcloud compute tpus tpu-vm ssh "$TPU_NAME" $(gcloud_tpu_flags) --worker="$1" \
    --command="$2"
}

# The prologue of every remote command: the checkout and its virtual environment.
remote_prologue() {
  printf 'set -euo pipefail; cd "$HOME/%s"; source "$HOME/%s/bin/activate"; ' "$REMOTE_DIR" "$VENV"
}
