#!/usr/bin/env bash
# Worker forward speed vs sentence-transformers (torch, CPU), measured in one run on this
# machine: all-MiniLM-L6-v2, a batch of 32 sequences of 128 tokens and a batch of 32
# sequences of mixed lengths (8..128 tokens, random, seeded). Not a test: it prints numbers.
#
#   bench/worker_vs_sentence_transformers.sh [MODEL_DIR]
#
# The two sides alternate for ROUNDS rounds and each side's best batch time is compared:
# on a shared machine other jobs only ever make a run slower, so the best is the fairest.
# Both sides pad the mixed batch to its longest sequence; tokens/s count real tokens.
#
# env: REF_PYTHON (python with torch + sentence-transformers; default
#      ~/.cache/mlx-serve/ref-venv/bin/python), MLX_SERVE_WORKER_BIN, BATCH, SEQ, MIN_SEQ
#      (shortest mixed length, default 8), SEED, ITERS, ROUNDS.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
model="${1:-$root/.deps/all-MiniLM-L6-v2}"
python="${REF_PYTHON:-$HOME/.cache/mlx-serve/ref-venv/bin/python}"
worker="${MLX_SERVE_WORKER_BIN:-$root/target/release/mlx-serve-worker}"
batch="${BATCH:-32}" seq="${SEQ:-128}" min_seq="${MIN_SEQ:-8}" seed="${SEED:-1}" iters="${ITERS:-8}" rounds="${ROUNDS:-3}"

[ -x "$worker" ] || { echo "build the worker first: cargo build --release -p mlx-serve-worker" >&2; exit 1; }
[ -x "$python" ] || { echo "no reference python at $python (set REF_PYTHON)" >&2; exit 1; }

fixed=$("$python" -c "print(','.join(['$seq'] * $batch))")
mixed=$("$python" -c "import random; r = random.Random($seed); print(','.join(str(r.randint($min_seq, $seq)) for _ in range($batch)))")
echo "model: $model  iters: $iters x $rounds rounds  cores: $(nproc)  load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "mixed lengths: $mixed"
results=()
for _ in $(seq "$rounds"); do
  for lengths in "$fixed" "$mixed"; do
    results+=("$("$worker" bench-forward --model "$model" --lengths "$lengths" --iters "$iters" 2>/dev/null)")
    results+=("$("$python" "$root/bench/st_encode.py" "$model" 0 0 "$iters" "$lengths" 2>/dev/null)")
  done
done

"$python" - "$fixed" "${results[@]}" <<'PY'
import json, sys
fixed_tokens = sum(int(n) for n in sys.argv[1].split(","))
runs = [json.loads(a) for a in sys.argv[2:]]
s0 = next(r for r in runs if "torch" in r)
print(f"sentence-transformers: torch {s0['torch']}, {s0['torch_threads']} threads")
for name, fixed in (("32 x 128 fixed", True), ("32 mixed lengths", False)):
    w = [r for r in runs if "compute_dtype" in r and (r["tokens"] == fixed_tokens) == fixed]
    s = [r for r in runs if "torch" in r and (r["tokens"] == fixed_tokens) == fixed]
    wb = max(r["best_tokens_per_second"] for r in w)
    wm = max(r["tokens_per_second"] for r in w)
    eb = max(r["encode_best_tokens_per_second"] for r in s)
    fb = max(r["forward_best_tokens_per_second"] for r in s)
    em = max(r["encode_tokens_per_second"] for r in s)
    ms = w[0]["tokens"] / wb * 1e3
    print(f"[{name}, {w[0]['tokens']} real tokens, padded to {w[0]['seq']}]")
    print(f"  mlx-serve-worker forward+pool ({w[0]['compute_dtype']}): best {wb:7.0f} tokens/s ({ms:.0f} ms/batch), best mean {wm:7.0f}")
    print(f"  sentence-transformers encode: best {eb:7.0f} tokens/s, best mean {em:7.0f}; forward+pool only: best {fb:7.0f}")
    print(f"  ratio worker / ST encode:  {wb / eb:.2f}x  (best batch);  {wm / em:.2f}x (best mean)")
    print(f"  ratio worker / ST forward: {wb / fb:.2f}x  (best batch)")
PY
