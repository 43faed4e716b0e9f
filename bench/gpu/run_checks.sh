#!/usr/bin/env bash
# The GPU checks of issue 18 on the device machine, from the files bench/gpu/pack.sh made:
# lays them out, runs the real supervisor + CUDA worker, prints one report.
#
#   bash bench/gpu/run_checks.sh [--no-gpu] [--diag] [--only STEP,...] [--bundle DIR]
#                                [--seconds S] [--budget S]
#
# How to run it (device time is short: one call per transfer, back to back):
#   here:   scripts/setup --cuda && bench/gpu/pack.sh     -> .gpu/t1, t2, ... (64 MiB a call,
#           less the checkout: four transfers of ~35 MiB on 2026-12-07)
#           (rerun both after the worker or supervisor changes: the bundle holds binaries)
#           copy .gpu/ into the checkout the device tool sends, if that is another one
#   calls 1..N-1: run(command="bash bench/gpu/run_checks.sh", carry=[".gpu/tK"], timeout_s=120)
#           -> each keeps its transfer there, says which are still missing, exit 3
#   call N: run(command="bash bench/gpu/run_checks.sh ...", carry=[".gpu/tN"], timeout_s=600)
#           -> the report (also $OUT/report.md)
# Test it here first on the CPU build: bench/gpu/pack.sh --cpu /tmp/b && KEEP=/tmp/k
#   WORK=/tmp/w OUT=/tmp/o PY=.deps/ref-venv/bin/python
#   bash bench/gpu/run_checks.sh --no-gpu --bundle /tmp/b --seconds 2 --budget 1800
#
# The bundle (default .gpu/, git-ignored) comes in transfers t1, t2, ... that fit a call with the checkout,
# one per device call (carry [".gpu/tN"]): each call first copies the transfer it carries
# into $KEEP (default /root/keep/mlx-serve-gpu, outside the checkout: it lasts while the
# machine stays warm, ~30 s after a call), checking each file's sha256 against the MANIFEST.
# With every file there, it assembles the layout and runs the checks; otherwise it says
# which transfers are still missing and exits 3. Send the calls back to back.
#
# Steps, each with its own time limit inside --budget (default 560 s; the device allows
# 600 s a call), each one's failure reported and the next still run:
#   layout   prefix (make install-cuda layout), libmlx.so from its xz parts (sha256 checked),
#            lib/mlx-serve/nvidia -> $NVIDIA_LIBS, `ldd` finds every library
#   env      GPU, driver, Python, torch, sentence-transformers
#   refs     sentence-transformers float32 references (fixtures + MiniLM)
#   parity-float32, parity-float16   every model over HTTP vs the references
#   traffic  issue 28's speed check: mixed-length texts over HTTP, 64/256 one-text clients and
#            an ingest (64 passages a request, 8/32 clients), load generator CPU beside server
#            CPU, beside ST fp16 at its best batch size (probed); one-request p50. About
#            10 x --seconds + 120 s (2 s warm-ups, ST probes of 3 s each): --seconds 15 fits
#            one call with the layout (`--only traffic --seconds 15 --budget 560`)
#   memory   GPU memory per loaded model; after eviction
#   parity-bfloat16
#   quant    MiniLM vs its 8-bit and 4-bit copies quantized there: GPU memory, texts/s
#   burst    (only with --only burst) issue 28's memory check: GPU memory of the MiniLM
#            worker through a 256-client mixed burst (BURST_SECONDS, default 30) and 15 s
#            idle, nvidia-smi beside `ctl workers`; BURST_VARIANTS="name:VAR=V;...,..." runs
#            it once per server environment (BURST_DTYPE, default float16)
#   priority (only with --only priority) issue 32's check: bench/priority_under_bulk.py with
#            PRIORITY_CLIENTS bulk clients (default 256), PRIORITY_SECONDS per phase (15),
#            PRIORITY_ARGS more of its options (e.g. "--bulk-max-batch-ms 10")
#   long     (only with --only long) short queries beside long documents
#            (docs/long-documents.md): bench/long_mixed.py, MiniLM at LONG_DTYPE (float16),
#            LONG_CLIENTS one-text clients (64) for LONG_SECONDS a phase (default --seconds),
#            then the same plus one 8000-token document every LONG_INTERVAL s (1), chunked;
#            LONG_ARGS more options ("--late": a late-chunking phase too). About
#            2 x (LONG_SECONDS + 10) s (3 x with --late) plus the start and warm-up
#   report   one markdown report, printed and written to $OUT/report.md
# $OUT (the device tool's; default ./gpu-out) gets report.md, run.log and results.tar.gz
# (every step's JSON and the server logs).
# --only: just these of the steps after env (e.g. `--only quant`, or `--only refs,parity-float16`;
# parity steps need refs), to split the checks over two calls on a warm machine.
# --diag: instead of the steps above, the worker-level experiments of bench/gpu/diag.py
# (Qwen3 batches, quantized kernels, attention shapes; DIAG_PARTS=part,... picks) and a
# shorter traffic step (skipped when --only names other steps).
# --no-gpu: a CPU bundle (pack.sh --cpu) on a machine without a GPU: no nvidia-smi, ST on
# the CPU; to test this script before spending GPU time.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
NO_GPU=0 BUNDLE=$ROOT/.gpu SECONDS_PER=8 BUDGET=560 DIAG=0 ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --no-gpu) NO_GPU=1;;
    --diag) DIAG=1;;
    --only) ONLY=",$2,"; shift;;
    --bundle) BUNDLE=$(realpath -m "$2"); shift;;
    --seconds) SECONDS_PER=$2; shift;;
    --budget) BUDGET=$2; shift;;
    *) echo "run_checks: unknown argument $1" >&2; exit 2;;
  esac
  shift
done
OUT=${OUT:-$ROOT/gpu-out}
KEEP=${KEEP:-/root/keep/mlx-serve-gpu}
WORK=${WORK:-/tmp/mlx-serve-gpu}
NVIDIA_LIBS=${NVIDIA_LIBS:-/opt/torch/.venv/lib/python3.12/site-packages/nvidia}
PY=${PY:-$(command -v /opt/torch/.venv/bin/python3 || command -v python3)}
START=$(date +%s)
DEADLINE=$((START + BUDGET))
mkdir -p "$OUT" "$KEEP" "$WORK/results"
exec > >(tee -a "$OUT/run.log") 2>&1
say() { printf '\n== %s\n' "$*"; }
STEPS=$WORK/results/steps.tsv
: > "$STEPS"

# ---- 1. stash the transfer this call carries, then see what is still missing
say "bundle: $BUNDLE -> $KEEP"
for dir in "$BUNDLE"/t*; do
  [ -d "$dir" ] || continue
  cp -f "$dir"/* "$KEEP"/ && echo "kept $(basename "$dir"): $(ls "$dir" | tr '\n' ' ')"
done
[ -f "$KEEP/MANIFEST" ] || { echo "run_checks: no MANIFEST: carry a transfer (.gpu/t1, ...) made by bench/gpu/pack.sh"; exit 3; }
missing=()
while read -r sha size transfer name; do
  [ "$transfer" = - ] && continue
  if [ ! -f "$KEEP/$name" ]; then missing+=("$transfer:$name")
  elif [ "$(sha256sum "$KEEP/$name" | cut -d' ' -f1)" != "$sha" ]; then
    echo "run_checks: $name: sha256 mismatch (a transfer of another pack?): removed"; rm -f "$KEEP/$name"; missing+=("$transfer:$name")
  fi
done < "$KEEP/MANIFEST"
if [ ${#missing[@]} -gt 0 ]; then
  need=$(printf '%s\n' "${missing[@]}" | cut -d: -f1 | sort -u | tr '\n' ' ')
  echo "run_checks: still missing: ${missing[*]}"
  echo "run_checks: send transfer(s) $need next (carry .gpu/tN), in calls back to back: files kept in $KEEP last only while the machine stays warm"
  exit 3
fi
MODE=$(awk '$4 == "mode" {print $1}' "$KEEP/MANIFEST")
[ "$MODE" = cpu ] && [ "$NO_GPU" = 0 ] && echo "run_checks: this is a CPU bundle (pack.sh --cpu): add --no-gpu" && exit 2

# joined NAME: the bundle's file NAME, from its parts NAME.00, NAME.01, ... (pack.sh)
joined() {
  awk -v n="$1." 'substr($4, 1, length(n)) == n && substr($4, length(n) + 1) ~ /^[0-9]+$/ {print $4}' \
    "$KEEP/MANIFEST" | sort | sed "s|^|$KEEP/|" | xargs cat
}

# ---- steps with time limits
remaining() { echo $((DEADLINE - $(date +%s))); }
# step NAME LIMIT_S COMMAND...: runs it with `timeout`, records status and seconds.
step() {
  local name=$1 limit=$2; shift 2
  local left; left=$(( $(remaining) - 20 ))   # 20 s kept for the report
  if [ "$name" = report ]; then left=$(remaining); fi
  if [ "$left" -lt 10 ]; then
    printf '%s\tskipped\t0\tout of time budget (%ss)\n' "$name" "$BUDGET" >> "$STEPS"; say "$name: SKIPPED (out of time)"; return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  say "$name (limit ${limit}s)"
  local t0=$SECONDS status note=""
  # A shell function runs in a child bash (exported below), so `timeout` can stop it.
  declare -F "$1" >/dev/null && set -- bash -c "$1"
  timeout --kill-after=10 "$limit" "$@"
  status=$?
  if [ $status -eq 0 ]; then note=ok
  elif [ $status -eq 124 ] || [ $status -eq 137 ]; then note="timed out after ${limit}s"
  else note="failed (exit $status)"; fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$([ $status -eq 0 ] && echo ok || echo FAIL)" "$((SECONDS - t0))" "$note" >> "$STEPS"
  echo "-- $name: $note"
  return $status
}

PREFIX=$WORK/prefix
MODELS=$WORK/models
# want STEP: true unless --only names other steps.
want() { [ -z "$ONLY" ] || [[ "$ONLY" == *",$1,"* ]]; }
layout() {
  set -e
  rm -rf "$PREFIX" "$MODELS" && mkdir -p "$PREFIX" "$MODELS"
  joined prefix.tar.xz | tar -C "$PREFIX" -xJf -
  local lib=$PREFIX/lib/mlx-serve/mlx/lib/libmlx.so
  joined libmlx.so.xz | xz -dc > "$lib"
  [ "$(sha256sum "$lib" | cut -d' ' -f1)" = "$(awk '$4 == "libmlx.so" {print $1}' "$KEEP/MANIFEST")" ] ||
    { echo "libmlx.so: sha256 mismatch after joining the parts"; return 1; }
  if [ "$MODE" = cuda ]; then
    [ -d "$NVIDIA_LIBS" ] || { echo "NVIDIA_LIBS=$NVIDIA_LIBS is not a folder (the CUDA 13 libraries)"; return 1; }
    ln -sfn "$NVIDIA_LIBS" "$PREFIX/lib/mlx-serve/nvidia"
  fi
  local unresolved
  unresolved=$(ldd "$PREFIX/bin/mlx-serve-worker" | grep 'not found' || true)
  [ -z "$unresolved" ] || { echo "worker libraries not found:"; echo "$unresolved"; return 1; }
  ldd "$PREFIX/bin/mlx-serve-worker" | grep -E 'libmlx|cublas|cudnn|nvrtc|libblas' || true
  joined all-MiniLM-L6-v2.tar.xz | tar -C "$MODELS" -xJf -
  for m in "$ROOT"/tests/fixtures/models/*; do ln -sfn "$m" "$MODELS/$(basename "$m")"; done
  "$PREFIX/bin/mlx-serve" --version && "$PREFIX/bin/mlx-serve-worker" --version
  ls "$MODELS"
}

env_facts() {
  "$PY" - "$WORK/results/env.json" "$NO_GPU" <<'PY'
import json, subprocess, sys, time, platform
out, no_gpu = sys.argv[1], sys.argv[2] == "1"
env = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python": platform.python_version(),
       "mode": "CPU (--no-gpu)" if no_gpu else "GPU"}
if not no_gpu:
    q = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                       capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    env["gpu"], env["driver"] = q, q.split(",")[-1].strip()
import torch, sentence_transformers
env["torch"] = f"{torch.__version__} (cuda available: {torch.cuda.is_available()})"
env["sentence_transformers"] = sentence_transformers.__version__
json.dump(env, open(out, "w"), indent=1)
print(env)
PY
}

export -f joined layout env_facts
export PREFIX MODELS KEEP MODE NVIDIA_LIBS ROOT WORK PY NO_GPU

CHECKS=("$PY" "$ROOT/bench/gpu/checks.py" --bin "$PREFIX/bin" --models "$MODELS" --work "$WORK/results"
        --refs-dir "$ROOT/tests/fixtures/reference" --seconds "$SECONDS_PER")
[ "$NO_GPU" = 1 ] && CHECKS+=(--no-gpu)

if step layout 120 layout; then
  step env 60 env_facts
  if [ "$DIAG" = 1 ]; then
    # --diag: the worker-level experiments of bench/gpu/diag.py, then a shorter traffic step.
    step diag 500 "$PY" "$ROOT/bench/gpu/diag.py" --bin "$PREFIX/bin" --models "$MODELS" --work "$WORK/results" \
      --only "${DIAG_PARTS:-qwen3,quant,shapes}"
    want traffic && step traffic 200 "${CHECKS[@]}" traffic --dtype auto --seconds 4
  elif ! want refs || step refs 150 "${CHECKS[@]}" refs; then
    # bfloat16 last: if time runs short, the throughput and memory numbers come first.
    want parity-float32 && step parity-float32 150 "${CHECKS[@]}" parity --dtype float32
    want parity-float16 && step parity-float16 150 "${CHECKS[@]}" parity --dtype float16
    want traffic && step traffic 500 "${CHECKS[@]}" traffic --dtype auto
    want memory && step memory 120 "${CHECKS[@]}" memory --dtype auto
    want parity-bfloat16 && step parity-bfloat16 150 "${CHECKS[@]}" parity --dtype bfloat16
    want quant && step quant 480 "${CHECKS[@]}" quant --dtype auto --seconds 3
    # Issue 28's memory check: only when asked for (--only burst), BURST_VARIANTS picks runs.
    [ -n "$ONLY" ] && want burst && step burst 560 "${CHECKS[@]}" burst --dtype "${BURST_DTYPE:-float16}" \
      --seconds "${BURST_SECONDS:-30}"
    # Issue 32's priority check: only when asked for (--only priority); PRIORITY_CLIENTS bulk
    # clients (default 256) beside one-text queries at 5/s, idle vs under the ingest.
    [ -n "$ONLY" ] && want priority && step priority 400 "$PY" "$ROOT/bench/priority_under_bulk.py" \
      --bin-dir "$PREFIX/bin" --model-dir "$MODELS/all-MiniLM-L6-v2" --cache-texts 0 \
      --bulk-clients "${PRIORITY_CLIENTS:-256}" --seconds "${PRIORITY_SECONDS:-15}" \
      --json "$WORK/results/priority.json" ${PRIORITY_ARGS:-}
    # Short queries beside long documents, only when asked for (--only long): 64 one-text clients, then
    # the same plus one 8k-token document a second (chunking); LONG_SECONDS a phase (default
    # --seconds), LONG_INTERVAL between documents (1), LONG_DTYPE (float16; auto with
    # --no-gpu), LONG_ARGS more of its options (e.g. "--late").
    [ -n "$ONLY" ] && want long && step long 500 "$PY" "$ROOT/bench/long_mixed.py" \
      --bin-dir "$PREFIX/bin" --model-dir "$MODELS/all-MiniLM-L6-v2" --clients "${LONG_CLIENTS:-64}" \
      --seconds "${LONG_SECONDS:-$SECONDS_PER}" --doc-interval "${LONG_INTERVAL:-1}" \
      --compute-dtype "${LONG_DTYPE:-$([ "$NO_GPU" = 1 ] && echo auto || echo float16)}" \
      --json "$WORK/results/long.json" --log-dir "$WORK/results" ${LONG_ARGS:-}
  fi
fi
# steps.tsv -> steps.json for the report
"$PY" -c 'import json,sys; rows=[l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()];
json.dump([{"step":r[0],"status":r[1],"seconds":r[2],"note":r[3]} for r in rows], open(sys.argv[2],"w"))' \
  "$STEPS" "$WORK/results/steps.json"
step report 30 "${CHECKS[@]}" report
cp -f "$WORK/results/report.md" "$OUT/report.md" 2>/dev/null
cp -f "$WORK/results/diag.jsonl" "$OUT/diag.jsonl" 2>/dev/null
tar -C "$WORK/results" -czf "$OUT/results.tar.gz" .
echo
echo "run_checks: done in $(( $(date +%s) - START ))s; report, run.log, results.tar.gz in $OUT"
grep -q 'FAIL' "$STEPS" && exit 1
exit 0
