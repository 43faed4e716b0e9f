"""Where the slowest queries' time went, from the server's own OpenTelemetry traces.

The benchmark sends each request with a sampled W3C `traceparent` (www.w3.org/TR/trace-context)
whose trace id it keeps; the server (`tracing.sample_ratio: 0`, so only these traces are
exported) sends its spans over OTLP/HTTP to `tests/clients/otlp_receiver.py`, run with a
Python that has the official `opentelemetry-proto` package (the test clients' venv). The
span tree is docs/tracing.md's: the server span, `tokenize`, `queue.wait`, `batch`,
`worker.forward`. Bulk requests are traced too, so the batches a query waited behind are
known (every batch's spans carry its `mlx.batch.id`).

For each query: the client's own lag (its thread started late), the time outside the server
span (HTTP on both sides, the client's socket), and inside it: before the queue (body,
tokenization), the queue wait, the batch (send to answer; the worker's forward within it),
and after the answer (scatter, encode). Times are wall clock (`time.time()` on this
machine, `SystemTime` in the server).
"""
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
RECEIVER = ROOT / "tests" / "clients" / "otlp_receiver.py"


def traceparent():
    """A fresh sampled traceparent and its trace id (hex)."""
    trace_id = os.urandom(16).hex()
    return f"00-{trace_id}-{os.urandom(8).hex()}-01", trace_id


class Receiver:
    """tests/clients/otlp_receiver.py in a process of its own, writing spans as JSON lines."""

    def __init__(self, python: Path):
        self.dir = Path(tempfile.mkdtemp(prefix="mlx-serve-traces-"))
        self.out = self.dir / "spans.jsonl"
        self.proc = subprocess.Popen([str(python), str(RECEIVER), str(self.out)], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.isdigit():
            self.stop()
            raise SystemExit(f"the OTLP receiver did not start with {python} (needs opentelemetry-proto)")
        self.endpoint = f"http://127.0.0.1:{line}/v1/traces"

    def config(self) -> str:
        return f"tracing:\n  enabled: true\n  endpoint: {self.endpoint}\n  sample_ratio: 0\n"

    def spans(self):
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        for f in self.dir.iterdir():
            f.unlink()
        self.dir.rmdir()


def _by_trace(spans):
    out = {}
    for s in spans:
        out.setdefault(s["trace_id"], []).append(s)
    return out


def _batches(spans):
    """Every batch seen in any trace: id -> (sent s, answered s, size, tokens, forward ms)."""
    out = {}
    fwd = {}
    for s in spans:
        a = s["attributes"]
        if s["name"] == "batch":
            out[a["mlx.batch.id"]] = (s["start_ns"] / 1e9, s["end_ns"] / 1e9, a["mlx.batch.size"], a["mlx.batch.tokens"])
        elif s["name"] == "worker.forward":
            fwd[a["mlx.batch.id"]] = a["mlx.worker.forward_us"] / 1e3
    return {k: v + (fwd.get(k, float("nan")),) for k, v in out.items()}


def breakdown(queries, spans):
    """One row per query (dict of ms), from its client record and its spans. `queries`:
    dicts with trace_id, scheduled, started, ended (wall seconds)."""
    traces, batches = _by_trace(spans), _batches(spans)
    rows = []
    for q in queries:
        ss = traces.get(q["trace_id"], [])
        server = [s for s in ss if s["kind"] == 2]  # SPAN_KIND_SERVER
        waits = [s for s in ss if s["name"] == "queue.wait"]
        mine = [s for s in ss if s["name"] == "batch"]
        if not (server and waits and mine):
            continue
        srv, wait, batch = server[0], waits[0], mine[0]
        tok = [s for s in ss if s["name"] == "tokenize"]
        fwd = [s for s in ss if s["name"] == "worker.forward"]
        s0, s1 = srv["start_ns"] / 1e9, srv["end_ns"] / 1e9
        w0, w1 = wait["start_ns"] / 1e9, wait["end_ns"] / 1e9
        b1 = batch["end_ns"] / 1e9
        bid = batch["attributes"]["mlx.batch.id"]
        # The batches answered while this query waited or computed, before its own.
        ahead = sorted((k, v) for k, v in batches.items() if k < bid and v[1] > w0)
        rows.append({
            "total": 1e3 * (q["ended"] - q["started"]),
            "client_lag": 1e3 * (q["started"] - q["scheduled"]),
            "outside_server": 1e3 * ((q["ended"] - q["started"]) - (s1 - s0)),
            "to_queue": 1e3 * (w0 - s0),
            "tokenize": 1e3 * sum((s["end_ns"] - s["start_ns"]) / 1e9 for s in tok),
            "queue_wait": 1e3 * (w1 - w0),
            "batch": 1e3 * (b1 - w1),
            "forward": fwd[0]["attributes"]["mlx.worker.forward_us"] / 1e3 if fwd else float("nan"),
            "after": 1e3 * (s1 - b1),
            "batch_size": batch["attributes"]["mlx.batch.size"],
            "ahead": [(k, round(1e3 * (v[1] - v[0]), 1), v[2], v[3], round(v[4], 1)) for k, v in ahead],
        })
    return rows


COLS = ["total", "client_lag", "outside_server", "to_queue", "tokenize", "queue_wait", "batch", "forward", "after"]


def report(label, queries, spans, worst=3):
    rows = breakdown(queries, spans)
    if not rows:
        print(f"  traces, {label}: no query traces received", flush=True)
        return
    rows.sort(key=lambda r: r["total"])
    print(f"  traces, {label}: {len(rows)} of {len(queries)} queries traced; ms (median row, then the slowest)")
    print("    " + " ".join(f"{c:>14}" for c in COLS) + "  size")
    med = {c: statistics.median(r[c] for r in rows) for c in COLS}
    print("    " + " ".join(f"{med[c]:14.1f}" for c in COLS) + "  (medians)")
    for r in rows[-worst:]:
        print("    " + " ".join(f"{r[c]:14.1f}" for c in COLS) + f"  {r['batch_size']}")
        print("      batches answered meanwhile (id, send->answer ms, inputs, tokens, forward ms):", r["ahead"])
    return rows


def slow_batches(spans, factor=2.0, slack_ms=10.0):
    """The batches that took over `factor` times what a line fitted to all of the run's
    batches (milliseconds against tokens, least squares) predicts plus `slack_ms`, and how
    many of them, and of all batches, overlapped a tokenization that ran off the request's
    thread (`mlx.tokenize.off_thread`: the ingest's 64-passage requests; docs/scheduling.md).
    Returns (slow, slow that overlapped, all, all that overlapped, largest batch's tokens)."""
    rows = [(v[0], v[1], v[3]) for v in _batches(spans).values()]
    tok = [(s["start_ns"] / 1e9, s["end_ns"] / 1e9) for s in spans
           if s["name"] == "tokenize" and s["attributes"].get("mlx.tokenize.off_thread")]
    if len(rows) < 2:
        return None
    xs, ys = [r[2] for r in rows], [1e3 * (r[1] - r[0]) for r in rows]
    mx, my = statistics.mean(xs), statistics.mean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0
    fixed = my - slope * mx

    def overlaps(r):
        return any(t1 > r[0] and t0 < r[1] for t0, t1 in tok)

    slow = [r for r, y in zip(rows, ys) if y > factor * (fixed + slope * r[2]) + slack_ms]
    return (len(slow), sum(map(overlaps, slow)), len(rows), sum(map(overlaps, rows)), max(xs))


def report_batches(spans):
    got = slow_batches(spans)
    if got:
        slow, slow_over, n, n_over, largest = got
        print(f"  traced batches: {slow} of {n} took over 2x the run's fitted line + 10 ms; {slow_over} of those"
              f" and {n_over} of all ran beside a bulk tokenization; the largest had {largest} tokens", flush=True)
