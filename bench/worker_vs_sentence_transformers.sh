#!/usr/bin/env bash
# Worker forward speed vs sentence-transformers (torch, CPU), measured in one run on this
# machine: all-MiniLM-L6-v2, batch 32, two shapes: every text 128 tokens, and mixed lengths
# (uniform 8..128, random order; the same token sequences on both sides). Not a test: it
# prints numbers.
#
#   bench/worker_vs_sentence_transformers.sh [MODEL_DIR]
#
# The two sides alternate for ROUNDS rounds and each side's best batch time is compared:
# on a shared machine other jobs only ever make a run slower, so the best is the fairest.
# Throughput counts real tokens; "padded" is what a rectangle batch computes
# (sequences × longest), "computed" what the worker's layers ran on.
#
# env: REF_PYTHON (python with torch + sentence-transformers; default
#      .deps/ref-venv/bin/python), MLX_SERVE_WORKER_BIN, BATCH, SEQ, ITERS, ROUNDS.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
model="${1:-$root/.deps/all-MiniLM-L6-v2}"
python="${REF_PYTHON:-$(cd "$(dirname "$0")/.." && pwd)/.deps/ref-venv/bin/python}"
worker="${MLX_SERVE_WORKER_BIN:-$root/target/release/mlx-serve-worker}"
batch="${BATCH:-32}" seq="${SEQ:-128}" iters="${ITERS:-8}" rounds="${ROUNDS:-3}"

[ -x "$worker" ] || { echo "build the worker first: cargo build --release -p mlx-serve-worker" >&2; exit 1; }
[ -x "$python" ] || { echo "no reference python at $python (set REF_PYTHON)" >&2; exit 1; }

ids="$(mktemp)"
trap 'rm -f "$ids"' EXIT
"$python" "$root/bench/st_encode.py" "$model" "$batch" "$seq" 0 --mixed --dump-ids "$ids" 2>/dev/null

echo "model: $model  batch: $batch  seq: $seq (mixed: 8..$seq)  iters: $iters x $rounds rounds  cores: $(nproc)  load: $(cut -d' ' -f1-3 /proc/loadavg)"
for shape in fixed mixed; do
  results=()
  for _ in $(seq "$rounds"); do
    if [ "$shape" = fixed ]; then
      results+=("$("$worker" bench-forward --model "$model" --batch "$batch" --seq "$seq" --iters "$iters" 2>/dev/null)")
      results+=("$("$python" "$root/bench/st_encode.py" "$model" "$batch" "$seq" "$iters" 2>/dev/null)")
    else
      results+=("$("$worker" bench-forward --model "$model" --ids "$ids" --iters "$iters" 2>/dev/null)")
      results+=("$("$python" "$root/bench/st_encode.py" "$model" "$batch" "$seq" "$iters" --mixed 2>/dev/null)")
    fi
  done
  "$python" - "$shape" "${results[@]}" <<'PY'
import json, sys
shape, runs = sys.argv[1], [json.loads(a) for a in sys.argv[2:]]
w = [r for r in runs if "compute_dtype" in r]
s = [r for r in runs if "torch" in r]
wb = max(r["best_tokens_per_second"] for r in w)
wm = max(r["tokens_per_second"] for r in w)
eb = max(r["encode_best_tokens_per_second"] for r in s)
fb = max(r["forward_best_tokens_per_second"] for r in s)
em = max(r["encode_tokens_per_second"] for r in s)
r0 = w[0]
ms = r0["tokens"] / wb * 1e3
print(f"== {shape}: {r0['batch']} sequences, {r0['tokens']} real tokens, longest {r0['seq']}: "
      f"padded rectangle {r0['padded_tokens']} ({r0['padded_tokens'] / r0['tokens']:.2f}x real), "
      f"worker computed {r0['computed_tokens_per_batch']} ({r0['computed_tokens_per_batch'] / r0['tokens']:.2f}x real)")
print(f"mlx-serve-worker forward+pool ({r0['compute_dtype']}): best {wb:7.0f} tokens/s ({ms:.0f} ms/batch), best mean {wm:7.0f}")
print(f"sentence-transformers encode (torch {s[0]['torch']}, {s[0]['torch_threads']} threads): best {eb:7.0f} tokens/s, best mean {em:7.0f}")
print(f"sentence-transformers forward+pool only: best {fb:7.0f} tokens/s")
print(f"ratio worker / ST encode:  {wb / eb:.2f}x  (best batch);  {wm / em:.2f}x (best mean)")
print(f"ratio worker / ST forward: {wb / fb:.2f}x  (best batch)")
PY
done
