"""What mlx-serve's /metrics says about the batches of one load: read before and after it.

Metric names are the ones docs/metrics.md lists: `mlx_serve_tokens_total` (real tokens sent
to workers), `mlx_serve_padded_tokens_total` (tokens computed, padding included),
`mlx_serve_batch_size` (histogram of sequences per batch; its `_count` is the number of
forwards), `mlx_serve_worker_forward_seconds` (the worker's time per forward). A metric the server does not export reads as missing, never as zero.
"""
import re

LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def totals(text: str) -> dict:
    """Each metric name summed over its label sets (one model, one kind of batch here)."""
    out = {}
    for line in text.splitlines():
        m = LINE.match(line)
        if m and not line.startswith("#"):
            labels = m.group(2) or ""
            if m.group(1).startswith("mlx_serve_batch_size") and 'endpoint="embed"' not in labels:
                continue
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


def batch_stats(before: str, after: str) -> dict:
    """padded/real, mean real tokens per forward, mean sequences per batch, forwards, over
    the interval between two scrapes (None for what the server does not report)."""
    a, b = totals(before), totals(after)

    def delta(name):
        return b[name] - a.get(name, 0.0) if name in b else None

    real, padded = delta("mlx_serve_tokens_total"), delta("mlx_serve_padded_tokens_total")
    seqs, forwards = delta("mlx_serve_batch_size_sum"), delta("mlx_serve_batch_size_count")
    forward_s, timed = delta("mlx_serve_worker_forward_seconds_sum"), delta("mlx_serve_worker_forward_seconds_count")

    def ratio(x, y):
        return x / y if x is not None and y else None

    return {
        "padded_per_real": ratio(padded, real),
        "real_tokens_per_forward": ratio(real, forwards),
        "sequences_per_batch": ratio(seqs, forwards),
        "forwards": forwards,
        "forward_ms": ratio(forward_s * 1e3 if forward_s is not None else None, timed),
        "real_tokens": real,
    }
