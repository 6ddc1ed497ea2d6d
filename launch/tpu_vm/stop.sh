#!/usr/bin/env bash
# Stops run RUN_NAME (as printed by run.sh) on every worker of $TPU_NAME.
#
#   launch/tpu_vm/stop.sh 20250101-120000          # SIGTERM: checkpoint, then exit
#   SIGNAL=KILL launch/tpu_vm/stop.sh 20250101-120000   # at once, no checkpoint
#
# SIGTERM makes the trainer save a checkpoint and exit cleanly; on a multi-host slice the processes
# agree on the stop step at their next log step (docs/scaling.md). The next run.sh with the same
# --workdir resumes from the newest checkpoint.
# Prints one line per worker ("worker 0: sent TERM to 4242" or "worker 0: not running").
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$HERE/env.sh"
RUN_NAME="${1:?usage: stop.sh RUN_NAME}"

tpu_ssh all "md=http://metadata.google.internal/computeMetadata/v1/instance/attributes
id=\$(curl -sf -H Metadata-Flavor:Google \$md/agent-worker-number || echo 0)
sig='${SIGNAL:-TERM}'
pidfile=\$HOME/$LOG_DIR/$RUN_NAME.worker-\$id.pid
if [ -f \$pidfile ] && kill -0 \$(cat \$pidfile) 2>/dev/null; then
  kill -\$sig \$(cat \$pidfile) && echo \"worker \$id: sent \$sig to \$(cat \$pidfile)\"
else echo \"worker \$id: not running\"; fi"
