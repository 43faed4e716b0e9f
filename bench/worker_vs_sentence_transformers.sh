#!/usr/bin/env bash
# Worker forward speed vs sentence-transformers (torch, CPU), measured in one run on this
# machine: all-MiniLM-L6-v2, batch 32 x 128 tokens. Not a test: it prints numbers.
#
#   bench/worker_vs_sentence_transformers.sh [MODEL_DIR]
#
# env: REF_PYTHON (python with torch + sentence-transformers; default
#      ~/.cache/mlx-serve/ref-venv/bin/python), MLX_SERVE_WORKER_BIN, BATCH, SEQ, ITERS.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
model="${1:-$root/.deps/all-MiniLM-L6-v2}"
python="${REF_PYTHON:-$HOME/.cache/mlx-serve/ref-venv/bin/python}"
worker="${MLX_SERVE_WORKER_BIN:-$root/target/release/mlx-serve-worker}"
batch="${BATCH:-32}" seq="${SEQ:-128}" iters="${ITERS:-10}"

[ -x "$worker" ] || { echo "build the worker first: cargo build --release -p mlx-serve-worker" >&2; exit 1; }
[ -x "$python" ] || { echo "no reference python at $python (set REF_PYTHON)" >&2; exit 1; }

echo "model: $model  shape: $batch x $seq  iters: $iters  cores: $(nproc)"
mlx_json="$("$worker" bench-forward --model "$model" --batch "$batch" --seq "$seq" --iters "$iters")"
st_json="$("$python" "$root/bench/st_encode.py" "$model" "$batch" "$seq" "$iters")"

"$python" - "$mlx_json" "$st_json" <<'PY'
import json, sys
m, s = json.loads(sys.argv[1]), json.loads(sys.argv[2])
w = m["tokens_per_second"]
print(f"mlx-serve-worker forward+pool ({m['compute_dtype']}): {w:10.0f} tokens/s  ({m['ms_per_batch']:.1f} ms/batch)")
print(f"sentence-transformers encode (torch {s['torch']}, {s['torch_threads']} threads): "
      f"{s['encode_tokens_per_second']:10.0f} tokens/s  ({s['encode_ms_per_batch']:.1f} ms/batch)")
print(f"sentence-transformers forward+pool only:      {s['forward_tokens_per_second']:10.0f} tokens/s  "
      f"({s['forward_ms_per_batch']:.1f} ms/batch)")
print(f"ratio worker / ST encode:  {w / s['encode_tokens_per_second']:.2f}x")
print(f"ratio worker / ST forward: {w / s['forward_tokens_per_second']:.2f}x")
PY
