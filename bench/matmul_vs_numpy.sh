#!/usr/bin/env bash
# fp32 1024³ matmul GFLOP/s: mlx-serve-worker (MLX CPU backend over OpenBLAS) beside numpy
# on the same machine, in one run, alternating so both see the same load. Prints the ratio.
# Usage: bench/matmul_vs_numpy.sh [ROUNDS]   (numpy from $PYTHON, default the test venv)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.deps/venv/bin/python}
ROUNDS=${1:-3}
best_worker=0 best_numpy=0
for _ in $(seq "$ROUNDS"); do
  w=$(target/release/mlx-serve-worker bench-matmul --n 1024 --iters 30 2>/dev/null | sed -E 's/.* ([0-9.]+) GFLOP\/s/\1/')
  n=$("$PYTHON" - <<'PY'
import time, numpy as np
n = 1024
a = np.random.randn(n, n).astype(np.float32); b = np.random.randn(n, n).astype(np.float32)
for _ in range(3): a @ b
t = time.perf_counter()
for _ in range(30): a @ b
print(f"{2 * n**3 / ((time.perf_counter() - t) / 30) / 1e9:.1f}")
PY
)
  echo "round: worker $w GFLOP/s, numpy $n GFLOP/s"
  best_worker=$(python3 -c "print(max($best_worker, $w))")
  best_numpy=$(python3 -c "print(max($best_numpy, $n))")
done
python3 -c "print(f'best of $ROUNDS: worker {$best_worker:.1f} GFLOP/s, numpy {$best_numpy:.1f} GFLOP/s, ratio {$best_worker / $best_numpy:.2f}x')"
