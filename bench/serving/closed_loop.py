"""Closed-loop one-text clients spread over processes, timing every request.

`bench/serving/load.py` counts texts per second from one event loop; a latency benchmark
needs each request's own time, and on a GPU one Python event loop tops out at a few
thousand requests a second, below what the server answers (bench/gpu/checks.py measured
it). So `Clients` starts `procs` processes (spawned: nothing of the parent's state is
inherited), each with its share of the clients on its own aiohttp loop; they import
first, say they are ready, and start together when `go()` is called, so the caller can
start its own traffic (the long documents) at the same moment.

Each client sends its next request as soon as its last one is answered
(`encoding_format: base64`), for `seconds`. Texts come from one stream shared by stride:
process p of P takes texts p, p + P, p + 2P, ... (wrapping around the set). Every answer is
checked (HTTP 200, one base64 embedding of `dims` float32); every 8th text of the set's
first pass is kept for `load.verify`. The first failure stops that process's clients.
"""
import asyncio
import os
import resource
import time

from . import load

SAMPLE_EVERY = 8


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def _run(url, model, texts, dims, clients, seconds, p, procs):
    import aiohttp
    lat, ends, samples, error = [], [], {}, None
    counter = iter(range(p, 1 << 62, procs))
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients), timeout=timeout) as session:
        start = time.perf_counter()
        stop_at = start + seconds

        async def client():
            nonlocal error
            while error is None and time.perf_counter() < stop_at:
                i = next(counter)
                t0 = time.perf_counter()
                try:
                    b64 = await load._embed(session, url, model, texts[i % len(texts)], dims)
                except Exception as e:  # noqa: BLE001 - any failure disqualifies the phase
                    error = error or f"short text #{i}: {e}"
                    return
                t1 = time.perf_counter()
                lat.append(t1 - t0)
                ends.append(t1 - start)
                if i < len(texts) and i % SAMPLE_EVERY == 0:
                    samples[i] = b64

        await asyncio.gather(*(client() for _ in range(clients)))
    return lat, ends, samples, error


def _process(args, ready, go, results):
    import aiohttp  # noqa: F401 - imported before the start: its cost is not the load's
    ready.put(os.getpid())
    go.wait()
    cpu0, t0 = _cpu_s(), time.perf_counter()
    lat, ends, samples, error = asyncio.run(_run(*args))
    results.put((lat, ends, samples, error, _cpu_s() - cpu0, time.perf_counter() - t0))


class Clients:
    """`c = Clients(...)` (processes started and ready), `c.go()`, then `c.results()`."""

    def __init__(self, url, model, texts, dims, clients, seconds, procs):
        import multiprocessing
        ctx = multiprocessing.get_context("spawn")
        self.procs = max(1, min(procs, clients))
        self._ready, self._results, self._go = ctx.Queue(), ctx.Queue(), ctx.Event()
        self.seconds = seconds
        parts = [clients // self.procs + (1 if p < clients % self.procs else 0) for p in range(self.procs)]
        self._children = [ctx.Process(target=_process, daemon=True, args=(
            (url, model, texts, dims, n, seconds, p, self.procs), self._ready, self._go, self._results))
            for p, n in enumerate(parts)]
        for c in self._children:
            c.start()
        for _ in self._children:
            self._ready.get(timeout=120)

    def go(self):
        self._go.set()

    def results(self) -> dict:
        """Every latency (s), when each ended (s after the start), the kept samples {text
        index: base64}, the first error, the processes' CPU seconds summed and the longest
        process's wall seconds (the last answers included)."""
        try:
            got = [self._results.get(timeout=self.seconds + 660) for _ in self._children]
        finally:
            for c in self._children:
                c.join(timeout=10)
                if c.is_alive():
                    c.kill()
        samples = {}
        for r in got:
            samples.update(r[2])
        errors = [r[3] for r in got if r[3]]
        return {"latencies": [x for r in got for x in r[0]], "ends": [x for r in got for x in r[1]],
                "samples": samples, "error": errors[0] if errors else None, "cpu_s": sum(r[4] for r in got),
                "wall_s": max(r[5] for r in got)}
