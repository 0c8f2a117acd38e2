#!/usr/bin/env bash
# The one-call accelerator check: the GPU subset against the CPU, then MFU, as one markdown section.
#
#   bench/device_check.sh              # on the lent GPU (DEVELOPERS.md, "Accelerators"): < 10 minutes
#   bench/device_check.sh --rehearse   # the same steps on this CPU, tiny shapes, no GPU assumptions
#
# Each step has its own time limit and its own line; everything lands in $OUT/device_check.md (a
# section ready for bench/RESULTS.md; $OUT defaults to a new temporary folder) with the raw logs.
#
# The GPU image has CUDA, jax 0.11.2 with its CUDA plugin (Python >= 3.12: jax 0.11 dropped 3.11),
# flax, optax, orbax, transformers and torch, and no network. What the GPU subset imports beyond
# that (bench/device_check.py, bench/mfu.py: jax, flax, optax, numpy, absl-py) is all in the image;
# the project's other pure-Python dependencies travel as wheels in the git-ignored .whl/ folder and
# are installed first, offline, without their dependencies:
#     ml_collections-1.1.0-py3-none-any.whl     (configs/, launch/)
# Fetch them here, before a device is lent (pure-Python wheels, so any Python 3 fits):
#     pip download --no-deps --only-binary=:all: -d .whl ml-collections==1.1.0
# and name .whl in the run tool's carry list. Never commit them.
#
# Steps (limit): wheels (60 s), checks (180 s: attention cudnn vs xla, bf16 train step vs float32 on
# the CPU, generate, compression kernel — bench/device_check.py), mfu TinyLlama-1.1B seq 2048
# (150 s), mfu one 7B-shaped step on one device, FSDP off, remat full (200 s; if it does not fit,
# 24 of its 32 layers). Exit status: the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
REHEARSE=0
[[ ${1:-} == --rehearse ]] && REHEARSE=1
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
MD=$OUT/device_check.md
FAILED=0
ROWS=()

step() {   # name limit_s command...: run with its own limit, log under $OUT, one line each
  local name=$1 limit=$2; shift 2
  local log=$OUT/$name.log t0 rc
  t0=$(date +%s.%N)
  timeout "$limit" "$@" >"$log" 2>&1
  rc=$?
  local secs
  secs=$(printf '%.1f' "$(echo "$(date +%s.%N) - $t0" | bc)")
  local status=ok
  if [[ $rc -eq 124 ]]; then
    status="FAIL (over its ${limit} s)"
  elif [[ $rc -ne 0 ]]; then
    status="FAIL (exit $rc)"
  fi
  [[ $rc -ne 0 ]] && FAILED=$((FAILED + 1))
  echo "step $name $status ${secs} s"
  ROWS+=("| $name | $status | $secs |")
  return $rc
}

if [[ $REHEARSE == 1 ]]; then
  export JAX_PLATFORMS=cpu
  MFU_SMALL=(--preset=smollm2-135m --num_layers=1 --seq=32 --batch=2 --steps=1)
  MFU_7B=("${MFU_SMALL[@]}" --mesh=1,1,1 --remat=full)      # the 7B step's settings, tiny shapes
  MFU_7B_LESS=("${MFU_7B[@]}")
else
  export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda,cpu}    # the CPU backend too: the checks' reference
  MFU_SMALL=(--preset=tinyllama-1.1b --seq=2048 --batch=8 --steps=5)
  MFU_7B=(--preset=llama2-7b --seq=2048 --batch=1 --steps=3 --mesh=1,1,1 --remat=full)
  MFU_7B_LESS=("${MFU_7B[@]}" --num_layers=24)
fi

if [[ -d .whl ]] && compgen -G ".whl/*.whl" >/dev/null; then
  step wheels 60 "$PY" -m pip install --no-index --no-deps -q .whl/*.whl
fi
step checks 180 "$PY" bench/device_check.py $([[ $REHEARSE == 1 ]] && echo --rehearse)
step mfu_small 150 "$PY" bench/mfu.py "${MFU_SMALL[@]}" --record=false
step mfu_7b 200 "$PY" bench/mfu.py "${MFU_7B[@]}" --record=false \
  || { grep -qi "RESOURCE_EXHAUSTED\|out of memory" "$OUT/mfu_7b.log" \
       && step mfu_7b_24_layers 200 "$PY" bench/mfu.py "${MFU_7B_LESS[@]}" --record=false; }

{
  echo "## Device check ($(date -u +%Y-%m-%d), $([[ $REHEARSE == 1 ]] && echo "CPU rehearsal" || echo "$(grep -m1 '^check env' "$OUT/checks.log" | cut -d' ' -f4-)"))"
  echo
  echo "bench/device_check.sh$([[ $REHEARSE == 1 ]] && echo " --rehearse"): each step with its own time limit."
  echo
  echo "| step | status | seconds |"
  echo "|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo '```'
  grep -h "^check " "$OUT/checks.log" 2>/dev/null
  for f in "$OUT"/mfu_*.log; do
    [[ -f $f ]] || continue
    echo "# $(basename "$f" .log)"
    grep -v "^WARNING\|^I0000\|^W0000\|^E0000" "$f" | tail -8
  done
  echo '```'
} >"$MD"
echo "wrote $MD (failed steps: $FAILED)"
exit "$FAILED"
