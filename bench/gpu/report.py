"""Renders bench/gpu/checks.py's JSON files into one markdown report (checks.py report).

Criteria are issue 18's: parity fp32 within the CPU build's tolerances (tests/api.rs),
fp16/bf16 embeddings cos >= 0.999, rerankers within 5e-3 (fp16) / 1e-2 (bf16) of
sentence-transformers float32; long passages >= 1.0x and short >= 0.8x ST fp16 on the same
GPU; one request p50 <= ST one-text time + 2 ms; nothing left on the GPU after eviction.
"""
import json
from pathlib import Path


def _load(work, name):
    path = Path(work) / name
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _verdict(ok):
    return "PASS" if ok else "FAIL"


def render(work):
    work = Path(work)
    lines = ["# mlx-serve GPU checks", ""]
    env = _load(work, "env.json") or {}
    for key in ("gpu", "driver", "python", "torch", "sentence_transformers", "mode", "started"):
        if key in env:
            lines.append(f"- {key}: {env[key]}")
    steps = _load(work, "steps.json") or []
    if steps:
        lines += ["", "## Steps", "", "| step | status | seconds | note |", "|---|---|---|---|"]
        for s in steps:
            lines.append(f"| {s['step']} | {s['status']} | {s.get('seconds', '')} | {s.get('note', '')} |")

    refs = _load(work, "refs.json")
    if refs:
        lines += ["", f"## Parity (reference: sentence-transformers float32 on the CPU, {refs['versions']})", ""]
        vs = {n: max(c["vs_stored_max_diff"] for c in m["cases"]) for n, m in refs["models"].items()}
        lines.append("Fresh references vs tests/fixtures/reference (same weights, other versions; the bundled "
                     "MiniLM has float16 weights, so it differs from its float32 reference by more): "
                     + ", ".join(f"{n} {d:.1e}" for n, d in vs.items()))
        lines += ["", "| dtype | model | kind | min cos | max abs diff | verdict | failed cases | seconds |",
                  "|---|---|---|---|---|---|---|---|"]
        for dtype in ("float32", "float16", "bfloat16"):
            par = _load(work, f"parity-{dtype}.json")
            if not par:
                lines.append(f"| {dtype} | (not run) | | | | FAIL | | |")
                continue
            for name, row in par["models"].items():
                cos = f"{row['min_cos']:.6f}" if "min_cos" in row else ""
                failed = "; ".join(row["failed_cases"]).replace("|", "/")
                lines.append(f"| {dtype} | {name} | {row['kind']} | {cos} | {row['max_diff']:.2e} | "
                             f"{_verdict(row['ok'])} | {failed} | {row['seconds']} |")

    tr = _load(work, "traffic.json")
    if tr:
        st = tr.get("st") or {"dtype": "(not run)", "device": "-", "short": float("nan"), "long": float("nan"),
                              "one_text_p50_ms": float("nan")}
        lines += ["", f"## Mixed-length traffic (all-MiniLM-L6-v2, compute_dtype {tr['dtype']}, "
                      f"{tr['seconds']:.0f} s each, random order; ST {st['dtype']} on {st['device']}, batch 32)", "",
                  "| texts | clients | mlx-serve texts/s | errors | ST texts/s | ratio | target | verdict |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, target in (("short", 0.8), ("long", 1.0)):
            for clients in (64, 256):
                row = tr["server"].get(f"{name}_{clients}")
                if not row:
                    continue
                ratio = row["texts_per_s"] / st[name]
                lines.append(f"| {name} | {clients} | {row['texts_per_s']:.0f} | {row['errors']} | {st[name]:.0f} | "
                             f"{ratio:.2f}x | >= {target}x | {_verdict(ratio >= target and row['errors'] == 0)} |")
        p50, st_p50 = tr.get("one_request_p50_ms"), st["one_text_p50_ms"]
        if p50 is not None:
            lines.append("")
            lines.append(f"One request p50: {p50:.2f} ms; ST one text: {st_p50:.2f} ms; target <= {st_p50 + 2:.2f} ms: "
                         f"{_verdict(p50 <= st_p50 + 2)}")
        lines.append(f"GPU memory of the MiniLM worker under load (nvidia-smi, peak): {tr.get('gpu_mib_under_load')} MiB")

    mem = _load(work, "memory.json")
    if mem:
        lines += ["", f"## GPU memory per loaded model (compute_dtype {mem['dtype']})", "",
                  f"Baseline (GPU used before the server): {mem.get('baseline_mib')} MiB; all loaded: "
                  f"{mem.get('total_loaded_mib')} MiB", "", "| model | worker pid | GPU MiB |", "|---|---|---|"]
        for name, row in mem["loaded"].items():
            lines.append(f"| {name} | {row['pid']} | {row['gpu_mib']} |")
        after = mem.get("after_evict", {})
        clean = not after.get("workers") and not after.get("gpu_apps_of_workers")
        lines += ["", f"After evicting every model: workers {after.get('workers')}, GPU processes of those workers "
                      f"{after.get('gpu_apps_of_workers')}, GPU used {after.get('total_mib')} MiB: {_verdict(clean)}"]
    q = _load(work, "quant.json")
    if q:
        lines += ["", f"## Quantized MiniLM (compute_dtype {q['dtype']}; 64 clients, {q['seconds']} s a set)", "",
                  "| model | short texts/s | long texts/s | GPU MiB | note |", "|---|---|---|---|---|"]
        for name, row in q["models"].items():
            rate = lambda k: f"{row[k]['texts_per_s']:.0f}" if k in row else "-"
            lines.append(f"| {name} | {rate('short')} | {rate('long')} | {row.get('gpu_mib')} | {row.get('error', '')} |")
        for bits, r in q["quantize"].items():
            last = [l for l in r["output"].splitlines() if l.strip()][-3:]
            lines.append(f"\n`quantize --bits {bits[0]}` (rc {r['rc']}, {r['seconds']} s): " + " / ".join(last))
    pr = _load(work, "priority.json")
    if pr:
        lines += ["", f"## Queries beside a bulk ingest ({pr['bulk_clients']} bulk clients x {pr['batch']} passages, "
                      f"queries at {pr['rate']}/s; bench/priority_under_bulk.py)", "",
                  "| build | idle p50 / p99 ms | under bulk p50 / p99 ms | ratio | ingest alone -> with queries |"
                  " load generator CPUs |", "|---|---|---|---|---|---|"]
        for name, r in pr.items():
            if isinstance(r, dict) and "idle_p50_ms" in r:
                lines.append(f"| {name} | {r['idle_p50_ms']:.1f} / {r['idle_p99_ms']:.1f} | {r['under_p50_ms']:.1f} / "
                             f"{r['under_p99_ms']:.1f} | {r['p50_ratio']:.1f}x / {r['p99_ratio']:.1f}x | "
                             f"{r['ingest_alone']:.0f} -> {r['ingest_mixed']:.0f} ({100 * r['ingest_kept']:.0f}%) | "
                             f"{r['client_cpus']['alone']:.2f} / {r['client_cpus']['mixed']:.2f} |")
        for name, r in pr.items():
            for phase, b in (r.get("inside", {}) if isinstance(r, dict) else {}).items():
                lines.append(f"- {name}, {phase}: query queue wait {b['query_queue_wait_ms']:.1f} ms, bulk "
                             f"{b['bulk_queue_wait_ms']:.1f} ms; {b['batches_per_s']:.1f} batches/s of "
                             f"{b['batch_inputs']:.1f} inputs, send to answer {b['batch_send_to_answer_ms']:.1f} ms "
                             f"(forward {b.get('batch_forward_ms', float('nan')):.1f} ms)")
    return "\n".join(lines) + "\n"
