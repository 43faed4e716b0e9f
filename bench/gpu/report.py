"""Renders bench/gpu/checks.py's JSON files into one markdown report (checks.py report).

Criteria are issue 18's: parity fp32 within the CPU build's tolerances (tests/api.rs),
fp16/bf16 embeddings cos >= 0.999, rerankers within 5e-3 (fp16) / 1e-2 (bf16) of
sentence-transformers float32; nothing left on the GPU after eviction. Traffic (issue 28): against sentence-transformers
at its best batch size, one-text traffic at 256 clients >= 1.3x on short texts and passages,
ingest (64 passages a request) >= 2x, one request p50 <= ST's in-process one-text p50.
Long documents (docs/long-documents.md): short-query p50 with one 8k-token document a second
<= 1.5x its p50 without them, at 64 clients.
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
        lines += _traffic(tr)

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
    lg = _load(work, "long.json")
    if lg:
        lines += _long(lg)
    return "\n".join(lines) + "\n"


def _long(lg):
    """Short queries' p50 with long documents / without (bench/long_mixed.py, docs/long-documents.md)."""
    a = lg["args"]
    lines = ["", f"## Short queries beside {a['doc_tokens']}-token documents ({lg['model']}, compute_dtype "
                 f"{a.get('compute_dtype') or 'auto'}, {a['clients']} clients, {float(a['seconds']):g} s a phase, one "
                 f"document every {float(a['doc_interval']):g} s; bench/long_mixed.py)", "",
             "| phase | short p50 / p90 / p99 ms | short texts/s | p50 ÷ phase A | verdict (≤ 1.5×) "
             "| documents sent / done in phase | document p50 / max s | windows | server tokens/s | peak RSS MiB "
             "| RSS 10 s after MiB | cores server / load generator (procs) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for name, r in lg["phases"].items():
        s, d = r["short"], r.get("documents")
        docs = f"{d['sent']} / {d['completed_in_phase']}" if d else "-"
        dl = f"{d['p50_s']:.2f} / {d['max_s']:.2f}" if d and d.get("p50_s") is not None else "-"
        ratio = f"{r['p50_ratio']:.2f}x" if "p50_ratio" in r else "-"
        lines.append(f"| {name} | {s['p50_ms']:.1f} / {s['p90_ms']:.1f} / {s['p99_ms']:.1f} | {s['texts_per_s']:.0f} | "
                     f"{ratio} | {r.get('verdict', '-')} | {docs} | {dl} | {d['windows'] if d else '-'} | "
                     f"{r['server_tokens_per_s']:.0f} | {r['peak_rss'] / 2**20:.0f} | {r['rss_after'] / 2**20:.0f} | "
                     f"{'-' if r['server_cores'] is None else format(r['server_cores'], '.2f')} / "
                     f"{r['client_cores']:.2f} ({r['client_procs']}) |")
        if d:
            base = lg["phases"]["A"]["server_tokens_per_s"]
            notes.append(f"- phase {name}: documents offered {d['offered_tokens_per_s']:.0f} tokens/s = "
                         f"{100 * d['offered_tokens_per_s'] / base:.0f}% of the {base:.0f} tokens/s computed in phase A; "
                         f"{d['due']} documents due within the phase, {d['due_unfinished']} of them unfinished; "
                         f"windows {d['windows']}, usage tokens {d['tokens']}")
        if s.get("error") or (d and d["errors"]):
            notes.append(f"- phase {name} errors: {s.get('error') or ''} {'; '.join((d or {}).get('errors', [])[:3])}")
    for mode, w in (lg.get("warm_up_document_alone") or {}).items():
        notes.append(f"- warm-up document alone ({mode}): {w['seconds']:.2f} s, {w['windows']} windows, "
                     f"{w['tokens']} tokens")
    return lines + [""] + notes


def _st_row(st, name):
    """(texts/s, batch size) of sentence-transformers on a text set (older files: batch 32)."""
    row = (st.get("sets") or {}).get(name)
    if row:
        return row["texts_per_s"], row["batch_size"]
    return st.get(name, float("nan")), 32 if name in st else None


def _traffic(tr):
    """Issue 28's speed check: server / sentence-transformers at its best batch size."""
    st = tr.get("st") or {"dtype": "(not run)", "device": "-"}
    lines = ["", f"## Mixed-length traffic (all-MiniLM-L6-v2, compute_dtype {tr['dtype']}, {tr['seconds']:.0f} s a row, "
                 f"random order; ST {st['dtype']} on {st['device']} at its best batch size)", ""]
    if st.get("sets"):
        lines.append("sentence-transformers, in-process, texts/s by batch size (probes), encode() over chunks of "
                     "the same texts in random order:")
        for name, row in st["sets"].items():
            probes = ", ".join(f"{bs}: {r:.0f}" for bs, r in row["probes"].items())
            lines.append(f"- {name}: {probes}; best **{row['batch_size']}**, measured {row['texts_per_s']:.0f} texts/s "
                         f"(chunks of {row['chunk']} texts)")
        lines.append("")
    lines += ["| row | texts | clients x texts/request | mlx-serve texts/s | errors | ST texts/s (batch) | ratio | "
              "target | verdict | load generator cores | server cores |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    targets = {"short_256": 1.3, "long_256": 1.3, "ingest_8": 2.0, "ingest_32": 2.0}
    for key, row in tr["server"].items():
        name = row.get("texts") or key.rsplit("_", 1)[0]
        rate, bs = _st_row(st, name)
        ratio = row["texts_per_s"] / rate if rate == rate and rate else float("nan")
        target = targets.get(key)
        verdict = "" if target is None else _verdict(ratio >= target and row["errors"] == 0)
        cpu = (f"{row['client_cores']:.2f} of {row['cores']} ({row['client_procs']} procs) | {row['server_cores']:.2f}"
               if "client_cores" in row else "- | -")
        lines.append(f"| {key} | {name} | {row.get('clients', key.rsplit('_', 1)[-1])} x {row.get('texts_per_request', 1)} | "
                     f"{row['texts_per_s']:.0f} | {row['errors']} | {rate:.0f} ({bs}) | {ratio:.2f}x | "
                     f"{'>= ' + str(target) + 'x' if target else ''} | {verdict} | {cpu} |")
    lines += ["", "Load generator cores: the client processes' CPU time (getrusage) / wall time; server cores: "
                  "supervisor + worker CPU time (/proc/PID/stat) over the same wall time."]
    for key, row in tr["server"].items():
        if "client_cores" in row:
            lines.append(f"- {key}: load generator used {row['client_cores']:.2f} of {row['cores']} cores, "
                         f"server {row['server_cores']:.2f}")
    for name in ("short", "long"):
        p50 = tr.get(f"one_request_p50_ms_{name}", tr.get("one_request_p50_ms") if name == "short" else None)
        st_p50 = st.get(f"one_text_p50_ms_{name}", st.get("one_text_p50_ms") if name == "short" else None)
        if p50 is None:
            continue
        if st_p50 is None:
            lines.append(f"\nOne request p50 ({name}): {p50:.2f} ms; ST not run")
            continue
        lines.append(f"\nOne request p50 ({name} texts, the same 100 texts twice): {p50:.2f} ms; ST in-process one "
                     f"text: {st_p50:.2f} ms; ratio {p50 / st_p50:.2f}; target <= ST: {_verdict(p50 <= st_p50)}")
    if tr.get("one_request_p50_error"):
        lines.append(f"\nOne request p50 failed: {tr['one_request_p50_error']}")
    if "embedding_cache" in tr:
        lines.append(f"\nServer embedding cache: {tr['embedding_cache']}; cache hits over the step: "
                     f"{tr.get('embedding_cache_hits')}")
    lines.append(f"\nGPU memory of the MiniLM worker under load (nvidia-smi, peak): {tr.get('gpu_mib_under_load')} MiB")
    return lines
