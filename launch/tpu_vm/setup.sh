#!/usr/bin/env bash
# Installs the project on every worker of $TPU_NAME (--worker=all): the code (git clone of
# $REPO_URL at $REPO_REF, or a copy of this working tree), a virtual environment with jax[tpu],
# and `pip install -e .`; optionally mounts a shared directory (multi-host runs need one).
#
#   launch/tpu_vm/setup.sh                                             # copy this working tree
#   REPO_URL=https://github.com/ORG/ntng_jax.git REPO_REF=main launch/tpu_vm/setup.sh
#   SHARED_MOUNT=/mnt/shared NFS=10.0.0.2:/vol1 launch/tpu_vm/setup.sh    # pods: NFS/Filestore
#   SHARED_MOUNT=/mnt/shared BUCKET=my-bucket launch/tpu_vm/setup.sh      # pods: gcsfuse
#
# Safe to re-run (it updates the code and the installation). Prints, per worker, a line such as
#   worker 0 of 4: 4 local / 16 global devices (TPU v4), jax 0.10.2
# which confirms that every host sees the whole slice.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# shellcheck source=env.sh
source "$HERE/env.sh"

# 1. The code.
if [ -n "$REPO_URL" ]; then
  echo "Cloning $REPO_URL ($REPO_REF) into ~/$REMOTE_DIR on every worker ..."
  tpu_ssh all "set -euo pipefail
    if [ -d \"\$HOME/$REMOTE_DIR/.git\" ]; then git -C \"\$HOME/$REMOTE_DIR\" fetch --quiet origin;
    else git clone --quiet '$REPO_URL' \"\$HOME/$REMOTE_DIR\"; fi
    git -C \"\$HOME/$REMOTE_DIR\" checkout --quiet '$REPO_REF'
    git -C \"\$HOME/$REMOTE_DIR\" pull --quiet --ff-only || true"
else
  echo "Copying $ROOT to ~/$REMOTE_DIR on every worker ..."
  archive="$(mktemp -d)/ntng_jax.tgz"
  run_cmd tar -C "$ROOT" -czf "$archive" --exclude=.git --exclude=runs --exclude=sweeps \
    --exclude=__pycache__ --exclude=.venv --exclude='*.egg-info' .
  # shellcheck disable=SC2046
  run_cmd gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME:ntng_jax.tgz" $(gcloud_tpu_flags) \
    --worker=all
  tpu_ssh all "set -euo pipefail; mkdir -p \"\$HOME/$REMOTE_DIR\"
    tar -xzf \"\$HOME/ntng_jax.tgz\" -C \"\$HOME/$REMOTE_DIR\" && rm \"\$HOME/ntng_jax.tgz\""
fi

# 2. Python (the image's python3 if >= 3.11, else one installed by uv), jax[tpu], the project.
echo "Installing $JAX_SPEC and the project on every worker ..."
tpu_ssh all "set -euo pipefail
  if python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    [ -x \"\$HOME/$VENV/bin/python\" ] || python3 -m venv \"\$HOME/$VENV\"
  else
    command -v uv >/dev/null || [ -x \"\$HOME/.local/bin/uv\" ] || \
      curl -LsSf https://astral.sh/uv/install.sh | sh >/dev/null
    export PATH=\"\$HOME/.local/bin:\$PATH\"
    [ -x \"\$HOME/$VENV/bin/python\" ] || uv venv --quiet --seed --python $PYTHON_VERSION \"\$HOME/$VENV\"
  fi
  source \"\$HOME/$VENV/bin/activate\"
  pip install --quiet --upgrade pip
  pip install --quiet '$JAX_SPEC' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
  pip install --quiet -e \"\$HOME/$REMOTE_DIR\"
  mkdir -p \"\$HOME/$LOG_DIR\""

# 3. Optional shared directory (multi-host runs: checkpoints and metrics must be visible to all).
if [ -n "$SHARED_MOUNT" ]; then
  if [ -n "$NFS" ]; then
    echo "Mounting NFS $NFS at $SHARED_MOUNT on every worker ..."
    tpu_ssh all "set -euo pipefail
      mountpoint -q '$SHARED_MOUNT' || { sudo apt-get -qq update && sudo apt-get -qq install -y nfs-common
        sudo mkdir -p '$SHARED_MOUNT' && sudo mount -t nfs -o rw,hard '$NFS' '$SHARED_MOUNT'
        sudo chmod a+rwx '$SHARED_MOUNT'; }"
  elif [ -n "$BUCKET" ]; then
    echo "Mounting gs://$BUCKET at $SHARED_MOUNT on every worker (gcsfuse) ..."
    tpu_ssh all "set -euo pipefail
      if ! command -v gcsfuse >/dev/null; then
        echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
        curl -s https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
        sudo apt-get -qq update && sudo apt-get -qq install -y gcsfuse
      fi
      sudo mkdir -p '$SHARED_MOUNT' && sudo chown \"\$USER\" '$SHARED_MOUNT'
      mountpoint -q '$SHARED_MOUNT' || gcsfuse --implicit-dirs --rename-dir-limit=1000000 '$BUCKET' '$SHARED_MOUNT'"
  else
    echo "SHARED_MOUNT is set but neither NFS nor BUCKET is; nothing mounted." >&2
    exit 2
  fi
fi

# 4. Check: every worker sees the whole slice.
echo "Checking jax on every worker ..."
tpu_ssh all "$(remote_prologue) python -c \"
import jax
d = jax.devices()[0]
print(f'worker {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} local /'
      f' {jax.device_count()} global devices ({d.device_kind}), jax {jax.__version__}')\""
echo "Set up. Next: launch/tpu_vm/run.sh --config=configs/bert.py:size=base --workdir=..."
