#!/usr/bin/env bash
# An experiment grid across n TPU VM pod slices: slice i runs shard i of n (`--shard=i/n`) on all of
# its workers (launch/tpu/run.sh's way: ELASTICITY_DISTRIBUTED=1, JAX finds the slice's workers).
#
#   launch/tpu/experiment.sh ZONE [PROJECT] --slices=tpu-a,tpu-b,tpu-c -- \
#       --config=configs/experiments/resistance.py:llama2-7b,alpaca,tpu_v4 --workdir=/mnt/gcs/runs/resistance
#   python -m launch.report --workdir=/mnt/gcs/runs/resistance      # merge the shards, write the report
#
# The work directory must be a path every worker of every slice sees (gcsfuse or Filestore mounted at
# the same path): a cell whose parent is in another shard waits for its done.json there. The slices run
# in parallel (one background ssh each); the script waits for all and fails if any failed. Re-running it
# resumes every shard. Environment: REPO_DIR, VENV, SYNC=1 as in launch/tpu/run.sh.
set -euo pipefail

usage() { echo "usage: $0 ZONE [PROJECT] --slices=NAME[,NAME...] -- <launch.experiment arguments>" >&2; exit 2; }
[[ $# -lt 3 ]] && usage
ZONE=$1; shift
PROJECT=()
if [[ $1 != --slices=* ]]; then PROJECT=("$1"); shift; fi
[[ ${1:-} == --slices=* ]] || usage
IFS=, read -r -a SLICES <<< "${1#--slices=}"; shift
[[ ${1:-} == "--" ]] && shift
N=${#SLICES[@]}
here=$(cd "$(dirname "$0")" && pwd)

pids=()
for i in "${!SLICES[@]}"; do
  "$here/run_module.sh" "${SLICES[$i]}" "$ZONE" "${PROJECT[@]}" -- launch.experiment --shard="$i/$N" "$@" \
    > "experiment_shard_${i}_of_${N}.log" 2>&1 &
  pids+=($!)
  echo "shard $i/$N on ${SLICES[$i]}: log experiment_shard_${i}_of_${N}.log (pid $!)"
done
status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then echo "shard $i/$N on ${SLICES[$i]} failed" >&2; status=1; fi
done
exit $status
