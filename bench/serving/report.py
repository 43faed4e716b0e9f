"""The printed result: per-row details, the comparison table and issue 12's targets.

A row is a dict: `label`; per text set (`short`, `long`, and with --fixed `fixed 7 words`, `fixed 81 words`) a dict
with `rate` (texts/s, None when the row failed), `error`, `done`, `min_cosine`, `batches`
(from /metrics) and `peak_rss`; `p50` (`p50_ms`, `p90_ms`); `rss_warm` (after the warm-up), `rss_after` (bytes);
or `skipped` with the reason.
"""
MiB = 2 ** 20

# Issue 12, "What it must show": the targets, checked in one run.
TARGET_SHORT = 0.9  # mixed short queries, x sentence-transformers
TARGET_LONG = 1.0  # mixed passages, x sentence-transformers
TARGET_ON_OFF = 4.0  # batching on / off, short queries
TARGET_PADDING = 1.02  # padded / real tokens
TARGET_PEAK_MIB = 300  # supervisor + worker during the passage load
TARGET_AFTER_MIB = 200  # 10 s after it
TARGET_P50_SLACK_MS = 1.0  # one short request vs ST encoding one text in-process


def rate_of(row, name):
    part = row.get(name) or {}
    return part.get("rate")


def cell(row, name, st):
    part = row.get(name)
    if row.get("skipped"):
        return "skipped"
    if not part:
        return "—"
    if part.get("rate") is None:
        return f"FAILED: {part.get('error')}"
    base = rate_of(st, name)
    ratio = f" = {part['rate'] / base:.2f}×" if base else ""
    return f"{part['rate']:.0f} texts/s{ratio}"


def mib(x):
    return f"{x / MiB:.0f} MiB" if x else "—"


def ms(p):
    return f"{p['p50_ms']:.1f} ms (p90 {p['p90_ms']:.1f})" if p else "—"


def comparison(rows, st, sets, st_p50):
    """Markdown: one line per row, short and long texts/s with ratios vs ST, p50, memory."""
    head = ["", "short queries (3–12 words)", "passages (6–120 words)"]
    extra = [s for s in sets if s not in ("short", "long")]
    head += extra + ["one short request p50", "peak RSS (passages)", "RSS 10 s after"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    st_line = [st["label"]] + [cell(st, s, st) for s in ["short", "long"] + extra]
    st_line += [ms(st_p50) + " (`encode([text])`)", "—", "—"]
    out.append("| " + " | ".join(st_line) + " |")
    for row in rows:
        line = [row["label"]] + [cell(row, s, st) for s in ["short", "long"] + extra]
        if row.get("skipped"):
            line += ["—", "—", "—"]
        else:
            line += [ms(row.get("p50")), mib((row.get("long") or {}).get("peak_rss")), mib(row.get("rss_after"))]
        out.append("| " + " | ".join(line) + " |")
    return "\n".join(out)


def batches(rows):
    """Markdown: what /metrics said about each mlx-serve load."""
    head = ("| row | texts | texts done | padded ÷ real tokens | real tokens per forward | sequences per batch "
            "| forwards | peak RSS | lowest cosine vs ST |")
    out = [head, "|---|---|---|---|---|---|---|---|---|"]

    def num(d, key, fmt):
        return fmt.format(d[key]) if d.get(key) is not None else "—"

    for row in rows:
        for name, part in row.items():
            if isinstance(part, dict) and "done" in part:
                b = part.get("batches") or {}
                out.append(f"| {row['label']} | {name} | {part['done']} | {num(b, 'padded_per_real', '{:.3f}')} "
                           f"| {num(b, 'real_tokens_per_forward', '{:.0f}')} "
                           f"| {num(b, 'sequences_per_batch', '{:.1f}')} | {num(b, 'forwards', '{:.0f}')} "
                           f"| {mib(part.get('peak_rss'))} | {num(part, 'min_cosine', '{:.5f}')} |")
    return "\n".join(out)


def verdict(ok):
    return "—" if ok is None else ("PASS" if ok else "MISS")


def targets(on, off, st, st_p50):
    """Markdown: issue 12's targets, measured value, PASS / MISS."""
    lines = ["| target (issue 12) | goal | measured | |", "|---|---|---|---|"]

    def ratio(a, b):
        return a / b if a is not None and b else None

    def add(what, goal, value, text, ok):
        lines.append(f"| {what} | {goal} | {text if value is not None else 'not measured'} | {verdict(ok)} |")

    r = ratio(rate_of(on, "short"), rate_of(st, "short"))
    add("mixed short queries vs ST", f"≥ {TARGET_SHORT:.2f}×", r, f"{r:.2f}×" if r else "", r and r >= TARGET_SHORT)
    r = ratio(rate_of(on, "long"), rate_of(st, "long"))
    add("mixed passages vs ST", f"≥ {TARGET_LONG:.2f}×", r, f"{r:.2f}×" if r else "", r and r >= TARGET_LONG)
    r = ratio(rate_of(on, "short"), rate_of(off or {}, "short"))
    add("batching on ÷ off, short queries", f"≥ {TARGET_ON_OFF:.0f}×", r, f"{r:.2f}×" if r else "",
        r and r >= TARGET_ON_OFF)
    pads = {n: ((on.get(n) or {}).get("batches") or {}).get("padded_per_real") for n in ("long", "short")}
    worst = max((p for p in pads.values() if p is not None), default=None)
    text = ", ".join(f"{p:.3f} ({'passages' if n == 'long' else 'queries'})" for n, p in pads.items() if p is not None)
    add("padded ÷ real tokens (worst load)", f"≤ {TARGET_PADDING}", worst, text,
        worst is not None and worst <= TARGET_PADDING)
    peak = (on.get("long") or {}).get("peak_rss")
    add("peak RSS supervisor + worker, passage load", f"≤ {TARGET_PEAK_MIB} MiB", peak, mib(peak),
        peak and peak <= TARGET_PEAK_MIB * MiB)
    after = on.get("rss_after")
    add("RSS 10 s after the passage load", f"≤ {TARGET_AFTER_MIB} MiB", after, mib(after),
        after and after <= TARGET_AFTER_MIB * MiB)
    p50 = (on.get("p50") or {}).get("p50_ms")
    goal = st_p50["p50_ms"] + TARGET_P50_SLACK_MS if st_p50 else None
    add("one short request p50", f"≤ ST one text + 1 ms{f' = {goal:.1f} ms' if goal else ''}", p50,
        f"{p50:.1f} ms" if p50 else "", p50 and goal and p50 <= goal)
    lines.append("| worker forward 32×128 vs ST | ≥ 0.90× | measured by `bench/worker_vs_sentence_transformers.sh`, "
                 "not here | — |")
    return "\n".join(lines)
