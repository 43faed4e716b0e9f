"""HTTP load as users send it, and the checks that keep a broken server from scoring.

`throughput()`: C concurrent aiohttp clients in this process, one text per OpenAI
`/v1/embeddings` request with `encoding_format: base64`, each client sending its next
request as soon as its last one is answered. Clients take texts from one shared cursor over
the set, so every server answers the same texts in the same order (the set is a prefix of
one shuffled stream; it wraps around if a server is faster than the set is long).
It runs for a fixed time, or a fixed number of texts.

Every answer is checked: HTTP 200, one embedding of the model's dimension. A sample (every
8th text of the set) is decoded and later compared with sentence-transformers' vector of the
same text (`verify()`: cosine >= 0.999). The first failure stops the load and marks the row.

`latency()`: one client, sequential requests, nothing else running: the time a single
short request takes end to end, client included.
"""
import asyncio
import base64
import itertools
import statistics
import time

import aiohttp
import numpy as np

SAMPLE_EVERY = 8
MIN_COSINE = 0.999


class LoadResult:
    def __init__(self):
        self.done = 0
        self.elapsed = 0.0
        self.error = None  # first failure, as text
        self.samples = {}  # text index -> vector the server returned

    @property
    def rate(self):
        return self.done / self.elapsed if self.elapsed and not self.error else None


def _body(model, text):
    return {"model": model, "input": text, "encoding_format": "base64"}


async def _embed(session, url, model, text, dims):
    """POST one text; returns its base64 embedding, or raises with what was wrong."""
    async with session.post(url + "/v1/embeddings", json=_body(model, text)) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {(await r.text())[:200]}")
        data = (await r.json())["data"]
    if len(data) != 1 or not isinstance(data[0]["embedding"], str):
        raise RuntimeError(f"expected one base64 embedding, got {str(data)[:200]}")
    b64 = data[0]["embedding"]
    if len(b64) != 4 * -(-dims * 4 // 3):
        raise RuntimeError(f"embedding of {len(b64)} base64 chars, expected {dims} float32")
    return b64


def decode(b64):
    return np.frombuffer(base64.b64decode(b64), dtype="<f4")


async def _throughput(url, model, texts, dims, clients, seconds, count):
    res = LoadResult()
    cursor = itertools.count()
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients), timeout=timeout) as session:
        start = time.perf_counter()
        stop_at = start + seconds if seconds else None

        async def client():
            while res.error is None:
                i = next(cursor)
                if (count is not None and i >= count) or (stop_at and time.perf_counter() >= stop_at):
                    return
                text = texts[i % len(texts)]
                try:
                    b64 = await _embed(session, url, model, text, dims)
                except Exception as e:  # noqa: BLE001 - any failure disqualifies the row
                    res.error = res.error or f"text #{i}: {e}"
                    return
                if i < len(texts) and i % SAMPLE_EVERY == 0:
                    res.samples[i] = decode(b64)
                res.done += 1

        await asyncio.gather(*(client() for _ in range(clients)))
        res.elapsed = time.perf_counter() - start
    return res


def throughput(url, model, texts, dims, clients=64, seconds=None, count=None) -> LoadResult:
    """Fixed duration (`seconds`) or fixed number of texts (`count`)."""
    return asyncio.run(_throughput(url, model, texts, dims, clients, seconds, count))


def verify(res: LoadResult, texts, reference, limit=96):
    """Compare up to `limit` sampled answers with `reference(list_of_texts) -> unit vectors`
    (sentence-transformers). Sets res.error on a mismatch; returns the lowest cosine."""
    idx = sorted(res.samples)[:limit]
    if not idx:
        return None
    ref = reference([texts[i] for i in idx])
    got = np.stack([res.samples[i] for i in idx])
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    worst = int(np.argmin(cos))
    if not cos[worst] >= MIN_COSINE:  # also catches NaN
        res.error = res.error or (f"text #{idx[worst]}: cosine {cos[worst]:.5f} vs sentence-transformers "
                                  f"(< {MIN_COSINE})")
    return float(cos.min())


async def _latency(url, model, texts, dims, n, warm, budget_s):
    async with aiohttp.ClientSession() as session:
        for t in texts[-warm:]:
            await _embed(session, url, model, t, dims)
        lat, start = [], time.perf_counter()
        for t in texts[:n]:
            if len(lat) >= 20 and time.perf_counter() - start > budget_s:
                break
            t0 = time.perf_counter()
            await _embed(session, url, model, t, dims)
            lat.append(time.perf_counter() - t0)
    return lat


def latency(url, model, texts, dims, n=100, warm=10, budget_s=15) -> dict:
    """p50 / p90 ms of n sequential one-text requests (after `warm` unmeasured ones; fewer
    than n past budget_s, so a slow server cannot stretch the run)."""
    lat = asyncio.run(_latency(url, model, texts, dims, n, warm, budget_s))
    return percentiles(lat)


def percentiles(seconds: list) -> dict:
    q = statistics.quantiles(seconds, n=10)
    return {"p50_ms": statistics.median(seconds) * 1e3, "p90_ms": q[-1] * 1e3}
