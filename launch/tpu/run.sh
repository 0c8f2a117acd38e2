#!/usr/bin/env bash
# Run the same training command on every worker of a TPU VM pod slice.
#
#   launch/tpu/run.sh TPU_NAME ZONE [PROJECT] -- --config=configs/sft.py:llama2-7b --workdir=/gcs/bucket/run
#
# Every worker runs `python -m launch.train <args>` from the same checkout with ELASTICITY_DISTRIBUTED=1,
# so the launcher calls jax.distributed.initialize() with no arguments and JAX's TPU cluster detection
# finds the other workers and the coordinator (worker 0) from the VM metadata: no address needed. The work directory
# must be a file-system path all workers see (a bucket mounted with gcsfuse at the same path on every
# worker, or an NFS/Filestore mount): orbax writes one checkpoint from all hosts together. A gs:// URL
# is refused (metrics, exports and snapshots are written with local file operations).
#
# Environment: REPO_DIR (checkout path on the workers, default ~/elasticity), VENV (default
# $REPO_DIR/.venv), SYNC=1 to rsync this checkout to every worker first (scp --worker=all).
# Preemption: GCE sends SIGTERM before reclaiming a spot/preemptible slice; the loop saves a
# checkpoint and exits, and re-running this script resumes from it.
set -euo pipefail

if [[ $# -lt 3 ]]; then
  echo "usage: $0 TPU_NAME ZONE [PROJECT] -- <launch.train arguments>" >&2
  exit 2
fi
TPU_NAME=$1; ZONE=$2; shift 2
PROJECT_FLAG=()
if [[ $# -gt 0 && $1 != "--" ]]; then PROJECT_FLAG=(--project "$1"); shift; fi
[[ ${1:-} == "--" ]] && shift
REPO_DIR=${REPO_DIR:-'~/elasticity'}
VENV=${VENV:-"$REPO_DIR/.venv"}

if [[ ${SYNC:-0} == 1 ]]; then
  here=$(cd "$(dirname "$0")/../.." && pwd)
  tar -C "$here" --exclude=.venv --exclude=.git -czf /tmp/elasticity_src.tgz .
  gcloud compute tpus tpu-vm scp /tmp/elasticity_src.tgz "$TPU_NAME":/tmp/ --worker=all \
    --zone "$ZONE" "${PROJECT_FLAG[@]}"
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --worker=all --zone "$ZONE" "${PROJECT_FLAG[@]}" \
    --command "mkdir -p $REPO_DIR && tar -C $REPO_DIR -xzf /tmp/elasticity_src.tgz"
fi

ARGS=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --worker=all --zone "$ZONE" "${PROJECT_FLAG[@]}" \
  --command "cd $REPO_DIR && . $VENV/bin/activate && ELASTICITY_DISTRIBUTED=1 python -m launch.train$ARGS 2>&1 | tee -a ~/train_\$(hostname).log"
