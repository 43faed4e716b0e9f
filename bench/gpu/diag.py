#!/usr/bin/env python3
"""Worker-level experiments on the GPU machine, each in its own process with a time limit,
one JSON line per run (bench/gpu/run_checks.sh --diag runs it after the layout step):

  qwen3   the Qwen3 fixture on hand-made token batches (one sequence at the limit, long +
          short together, equal lengths) at float32 and float16; a failing case again with
          CUDA_LAUNCH_BLOCKING=1 (plainer error) and exact attention shapes (this found
          MLX's RoPE launch failure: worker/src/models/qwen3.rs, norm_rope)
  quant   MiniLM quantized here (8-bit; 8-bit with the embedding tables or the encoder kept
          in float; 4-bit mixed), then `bench-forward` on one sequence, 8 and 64 sequences
  quant-serving  8-bit MiniLM in the order serving runs it (warm-up, then short sequences)
          with MLX's quantized kernel, without CUDA graphs, and dequantize-then-matmul; then
          speed of f16 vs 8-bit (both ways) on mixed batches
  shapes  MiniLM float16, `bench-forward --vary`: new mixed-length batches as traffic brings
          them (cold: each batch's shapes seen for the first time; warm: again), with the
          attention shapes exact or on the ladder, cuDNN attention on or off, CUDA graphs on
          or off
  contention  MiniLM float16, `bench-forward --vary` on passages and on queries, the host
          quiet and then with a busy loop on every core (the serving host also runs the
          supervisor and the load generator: does host CPU slow the GPU forward?)

  diag.py --bin DIR --models DIR --work DIR [--only qwen3,quant,quant-serving,shapes,contention]
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def run(args, env_extra, limit, tag, out):
    env = dict(os.environ, **env_extra)
    t0 = time.perf_counter()
    try:
        p = subprocess.run(args, env=env, capture_output=True, text=True, timeout=limit)
        rc, text = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc = "timeout"
        text = (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
    row = {"tag": tag, "env": env_extra, "rc": rc, "seconds": round(time.perf_counter() - t0, 2)}
    last = [l for l in text.splitlines() if l.startswith("{")]
    if rc == 0 and last:
        row["result"] = json.loads(last[-1])
    else:
        row["tail"] = text[-1500:]
    print(json.dumps(row), flush=True)
    out.write(json.dumps(row) + "\n")
    out.flush()
    return row


def qwen3(a, out):
    worker = str(Path(a.bin) / "mlx-serve-worker")
    model = str(Path(a.models) / "tiny-qwen3-embed")
    seq = lambda n, s: [100 + (s * 31 + i * 7) % 900 for i in range(n)]
    cases = {  # the fixture takes at most 64 tokens
        "one_64": [seq(64, 1)],
        "64_64_5": [seq(64, 1), seq(64, 2), seq(5, 3)],
        "30_5": [seq(30, 1), seq(5, 2)],
        "20_20": [seq(20, 1), seq(20, 2)],
        "40x_mixed": [seq(8 + (i * 37) % 57, i) for i in range(40)],
    }
    for dtype in ("float32", "float16"):
        for name, ids in cases.items():
            path = Path(a.work) / f"qwen3-{name}.json"
            path.write_text(json.dumps(ids))
            base = [worker, "bench-forward", "--model", model, "--ids", str(path), "--iters", "2", "--compute-dtype", dtype]
            row = run(base, {}, 60, f"qwen3 {dtype} {name}", out)
            if row["rc"] != 0:
                for tag, env in (("blocking", {"CUDA_LAUNCH_BLOCKING": "1", "MLX_USE_CUDA_GRAPHS": "0"}),
                                 ("exact", {"MLX_SERVE_ATTENTION_SHAPES": "exact"})):
                    run(base, env, 60, f"qwen3 {dtype} {name} {tag}", out)


def quant(a, out):
    worker = str(Path(a.bin) / "mlx-serve-worker")
    src = Path(a.models) / "all-MiniLM-L6-v2"
    copies = {
        "8bit": ["--bits", "8"],
        "8bit-float-tables": ["--bits", "8", "--bits-for", "embeddings=0"],
        "8bit-float-encoder": ["--bits", "8", "--bits-for", "encoder=0"],
        "4bit": ["--bits", "4"],
    }
    for name, flags in copies.items():
        dst = Path(a.work) / f"minilm-{name}"
        row = run([worker, "quantize", "--src", str(src), "--dst", str(dst), *flags], {}, 120, f"quantize {name}", out)
        if row["rc"] != 0:
            continue
        for batch, seq in ((1, 16), (8, 32), (64, 128)):
            run([worker, "bench-forward", "--model", str(dst), "--batch", str(batch), "--seq", str(seq), "--mixed",
                 "--iters", "5"], {}, 60, f"quant {name} batch {batch}x{seq}", out)


def quant_serving(a, out):
    """The serving order that hung on CUDA (warm-up at load, then one short sequence),
    quantized 8-bit, with MLX's kernel, without CUDA graphs, and dequantize-then-matmul."""
    worker = str(Path(a.bin) / "mlx-serve-worker")
    src = Path(a.models) / "all-MiniLM-L6-v2"
    dst = Path(a.work) / "minilm-serve-8bit"
    run([worker, "quantize", "--src", str(src), "--dst", str(dst), "--bits", "8"], {}, 120, "quantize 8bit", out)
    ids = Path(a.work) / "short-11.json"
    ids.write_text(json.dumps([[101, 2054, 2003, 1996, 3007, 1997, 2605, 1999, 2286, 1029, 102]]))
    many = Path(a.work) / "short-mixed.json"
    many.write_text(json.dumps([[101] + [2000 + (i * 7 + j) % 5000 for j in range(2 + i % 14)] + [102] for i in range(40)]))
    for tag, env in (("kernel", {}), ("kernel no-graphs", {"MLX_USE_CUDA_GRAPHS": "0"}),
                     ("dequantize", {"MLX_SERVE_QUANTIZED_MATMUL": "dequantize"})):
        for name, path in (("1x11", ids), ("40 short", many)):
            run([worker, "bench-forward", "--model", str(dst), "--ids", str(path), "--iters", "20"], env, 150,
                f"quant-serving {tag} {name}", out)
    for tag, env in (("f16", {}), ("8bit dequantize", {"MLX_SERVE_QUANTIZED_MATMUL": "dequantize"}), ("8bit kernel", {})):
        model = src if tag == "f16" else dst
        for batch, seq in ((256, 160), (256, 16), (8, 32)):
            run([worker, "bench-forward", "--model", str(model), "--batch", str(batch), "--seq", str(seq), "--vary", "12",
                 "--iters", "3"], env, 90, f"quant-speed {tag} batch {batch} seq 8..{seq}", out)


def shapes(a, out):
    worker = str(Path(a.bin) / "mlx-serve-worker")
    model = str(Path(a.models) / "all-MiniLM-L6-v2")
    variants = [
        ("exact", {"MLX_SERVE_ATTENTION_SHAPES": "exact"}),
        ("ladder", {"MLX_SERVE_ATTENTION_SHAPES": "ladder"}),
        ("exact no-cudnn", {"MLX_SERVE_ATTENTION_SHAPES": "exact", "MLX_CUDA_USE_CUDNN_SDPA": "0"}),
        ("ladder no-cudnn", {"MLX_SERVE_ATTENTION_SHAPES": "ladder", "MLX_CUDA_USE_CUDNN_SDPA": "0"}),
        ("ladder no-graphs", {"MLX_SERVE_ATTENTION_SHAPES": "ladder", "MLX_USE_CUDA_GRAPHS": "0"}),
    ]
    for batch, seq in ((256, 160), (32, 160), (256, 16)):
        for name, env in variants:
            run([worker, "bench-forward", "--model", model, "--batch", str(batch), "--seq", str(seq),
                 "--vary", "24", "--iters", "2", "--compute-dtype", "float16"], env, 90,
                f"shapes {name} batch {batch} seq 8..{seq}", out)


def contention(a, out):
    worker = str(Path(a.bin) / "mlx-serve-worker")
    model = str(Path(a.models) / "all-MiniLM-L6-v2")
    spin = "import time\nwhile True: pass\n"
    for busy in (0, os.cpu_count() or 1, 0):
        hogs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(busy)]
        try:
            for batch, seq in ((256, 160), (32, 160), (256, 16)):
                run([worker, "bench-forward", "--model", model, "--batch", str(batch), "--seq", str(seq),
                     "--vary", "24", "--iters", "2", "--compute-dtype", "float16"], {}, 90,
                    f"contention busy={busy} batch {batch} seq 8..{seq}", out)
        finally:
            for h in hogs:
                h.kill()
                h.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--only", default="qwen3,quant,shapes")
    a = ap.parse_args()
    Path(a.work).mkdir(parents=True, exist_ok=True)
    with open(Path(a.work) / "diag.jsonl", "a") as out:
        for part in a.only.split(","):
            {"qwen3": qwen3, "quant": quant, "quant-serving": quant_serving, "shapes": shapes,
             "contention": contention}[part](a, out)


if __name__ == "__main__":
    sys.exit(main())
