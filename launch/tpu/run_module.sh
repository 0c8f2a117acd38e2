#!/usr/bin/env bash
# launch/tpu/run.sh for any launcher module: run `python -m MODULE <args>` on every worker of a slice.
#
#   launch/tpu/run_module.sh TPU_NAME ZONE [PROJECT] -- launch.experiment --config=... --workdir=...
set -euo pipefail
if [[ $# -lt 4 ]]; then
  echo "usage: $0 TPU_NAME ZONE [PROJECT] -- MODULE <arguments>" >&2
  exit 2
fi
TPU_NAME=$1; ZONE=$2; shift 2
PROJECT_FLAG=()
if [[ $# -gt 0 && $1 != "--" ]]; then PROJECT_FLAG=(--project "$1"); shift; fi
[[ ${1:-} == "--" ]] && shift
MODULE=$1; shift
REPO_DIR=${REPO_DIR:-'~/elasticity'}
VENV=${VENV:-"$REPO_DIR/.venv"}

if [[ ${SYNC:-0} == 1 ]]; then
  here=$(cd "$(dirname "$0")/../.." && pwd)
  tar -C "$here" --exclude=.venv --exclude=.git -czf "/tmp/elasticity_src_$TPU_NAME.tgz" .
  gcloud compute tpus tpu-vm scp "/tmp/elasticity_src_$TPU_NAME.tgz" "$TPU_NAME":/tmp/elasticity_src.tgz \
    --worker=all --zone "$ZONE" "${PROJECT_FLAG[@]}"
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --worker=all --zone "$ZONE" "${PROJECT_FLAG[@]}" \
    --command "mkdir -p $REPO_DIR && tar -C $REPO_DIR -xzf /tmp/elasticity_src.tgz"
fi

ARGS=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --worker=all --zone "$ZONE" "${PROJECT_FLAG[@]}" \
  --command "cd $REPO_DIR && . $VENV/bin/activate && ELASTICITY_DISTRIBUTED=1 python -m $MODULE$ARGS 2>&1 | tee -a ~/${MODULE//./_}_\$(hostname).log"
