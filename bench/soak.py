#!/usr/bin/env python3
"""Soak test (not in CI): mlx-serve under mixed traffic for a long time while its workers
are killed and frozen, reporting what must stay flat.

Traffic (--clients threads, each in a loop, one request at a time):
  - embeddings of mixed-length texts (a few words to a few hundred), OpenAI and Ollama routes;
  - rerank of a query against 2-20 documents; /v1/tokenize;
  - hostile requests: bad JSON, wrong types, texts of only NUL and zero-width characters,
    a 4 MB text, a 2 MB body of token ids, an unknown model, a 1 MB control-socket line;
  - slow clients: headers a byte a second, a body that stops half way.
Chaos (one thread): every --chaos-every seconds, a random worker is SIGKILLed, or SIGSTOPped
for 1-4 s and SIGCONTed.
Every 10 s (and at the end): resident memory of the supervisor and of its workers, open file
descriptors and sockets of the supervisor, its threads, connections to its port.

Every request is accounted for: a well-formed request must get an HTTP answer (a 2xx, or a
429/503/504 the client may retry); a hostile one a 4xx. A request without any answer (the
connection dropped, no response before the client's timeout) is LOST. The run fails (exit 1)
when a request is lost, a well-formed request gets another 5xx, or the supervisor's RSS,
fds or sockets grow past the warm-up figures by more than the --max-* allowances.

Usage (stdlib only; build first with `cargo build --release --locked --workspace`):
  python3 bench/soak.py [--minutes 10] [--clients 12] [--chaos-every 20] [--seed 1]
The machine may be shared: the numbers of a run are printed with the load average.
"""
import argparse
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EMBED = "all-MiniLM-L6-v2"
RERANK = "tiny-bert-rerank"
WORDS = ("the of and a to in is you that it he was for on are as with his they at be this have from or one had "
         "by word but not what all were we when your can said there use an each which she do how their if will "
         "up other about out many then them these so some her would make like him into time has look two more "
         "mlx metal apple silicon embedding reranker batch worker tokenizer vector query passage").split()
CONFIG = """\
server:
  header_read_timeout_seconds: 10
  body_read_timeout_seconds: 10
limits:
  request_timeout_seconds: 60
cache:
  ttl_seconds: 0
"""


def say(*a):
    print(*a, flush=True)


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = Counter()  # (kind, outcome)
        self.failures = []       # first few unexpected answers, for the report

    def add(self, kind, outcome, detail=""):
        with self.lock:
            self.counts[(kind, outcome)] += 1
            if outcome in ("LOST", "5xx") and len(self.failures) < 20:
                self.failures.append(f"{kind}: {outcome} {detail}"[:300])


def text(rng, lo, hi):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def call(port, method, path, body, timeout=90, headers=None):
    """One request on a new connection: (status, body) or raises on a transport failure."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"content-type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def well_formed(rng):
    r = rng.random()
    if r < 0.45:
        n = rng.choice([1, 1, 1, 4, 16])
        long = rng.random() < 0.3
        inputs = [text(rng, 20, 300) if long else text(rng, 2, 12) for _ in range(n)]
        return "embed", "POST", "/v1/embeddings", {"model": EMBED, "input": inputs if n > 1 else inputs[0]}
    if r < 0.6:
        return "ollama", "POST", "/api/embed", {"model": EMBED, "input": [text(rng, 2, 40)]}
    if r < 0.85:
        docs = [text(rng, 3, 60) for _ in range(rng.randint(2, 20))]
        return "rerank", "POST", "/v1/rerank", {"model": RERANK, "query": text(rng, 2, 8), "documents": docs}
    return "tokenize", "POST", "/v1/tokenize", {"model": EMBED, "input": text(rng, 2, 50)}


def hostile(rng):
    r = rng.random()
    if r < 0.2:
        return "bad-json", "POST", "/v1/embeddings", b'{"model": "' + EMBED.encode() + b'", "input": ['
    if r < 0.35:
        return "bad-type", "POST", "/v1/rerank", {"model": RERANK, "query": 3, "documents": {"a": 1}}
    if r < 0.5:
        return "empty-text", "POST", "/v1/embeddings", {"model": EMBED, "input": ["\u0000", "\u200b\u200b"]}
    if r < 0.6:
        return "huge-text", "POST", "/v1/embeddings", {"model": EMBED, "input": "a " * 2_000_000}
    if r < 0.7:
        return "id-bomb", "POST", "/v1/embeddings", ('{"model": "%s", "input": [[%s1]]}' % (EMBED, "1," * 1_000_000)).encode()
    if r < 0.85:
        return "unknown-model", "POST", "/v1/embeddings", {"model": "no-such-model-xyz", "input": "x"}
    return "no-route", "GET", "/v1/nothing", b""


def client(port, stop, stats, seed):
    rng = random.Random(seed)
    while not stop.is_set():
        bad = rng.random() < 0.12
        kind, method, path, body = hostile(rng) if bad else well_formed(rng)
        if kind == "huge-text" or kind == "id-bomb":
            time.sleep(rng.random() * 2)  # keep the big ones occasional
        try:
            status, data = call(port, method, path, body)
        except (OSError, http.client.HTTPException) as e:
            stats.add(kind, "LOST", repr(e))
            continue
        if bad:
            # A huge text and a huge id list are truncated to the model's limit (limits.truncate):
            # 200 is the right answer for both, as long as they fit the in-flight budget.
            outcome = "4xx" if 400 <= status < 500 else ("200" if status == 200 and kind in ("huge-text", "id-bomb") else f"unexpected-{status}")
            if status >= 500:
                outcome = "5xx"
        elif status == 200:
            outcome = "200"
        elif status in (429, 503, 504):
            outcome = f"retry-{status}"
        elif status >= 500:
            outcome = "5xx"
        else:
            outcome = f"unexpected-{status}"
        stats.add(kind, outcome, f"{status} {data[:200]!r}")


def slow_clients(port, stop, stats, rng):
    """Now and then: a connection trickling its headers, one abandoning its body."""
    while not stop.wait(rng.uniform(5, 15)):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            if rng.random() < 0.5:
                head = b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                closed = False
                for b in head:
                    if stop.is_set():
                        break
                    try:
                        s.send(bytes([b]))
                    except OSError:
                        closed = True
                        break
                    time.sleep(1)  # a byte a second: the attack itself
                stats.add("slow-headers", "closed-by-server" if closed else "still-open")
            else:
                s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"model\"")
                answer = s.recv(64)
                stats.add("stalled-body", "408" if b" 408 " in answer else f"other {answer[:20]!r}")
            s.close()
        except OSError as e:
            stats.add("slow-client", f"error {type(e).__name__}")


def control_socket_abuse(home, port, stop, stats, rng):
    path = home / "run" / f"mlx-serve-{port}.sock"
    while not stop.wait(rng.uniform(20, 40)):
        try:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(15)
            s.connect(str(path))
            try:
                s.sendall(b"x" * (1 << 20))
            except OSError:
                pass
            answer = s.recv(4096)
            stats.add("control-long-line", "refused" if b"longer than" in answer else f"other {answer[:40]!r}")
            s.close()
        except OSError as e:
            stats.add("control-long-line", f"error {type(e).__name__}")


def children(pid, name):
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                comm = stat[stat.find("(") + 1:stat.rfind(")")]
                ppid = int(stat[stat.rfind(")") + 2:].split()[1])
                if ppid == pid and name.startswith(comm):
                    out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


def chaos(pid, stop, stats, rng, every):
    while not stop.wait(every):
        workers = children(pid, "mlx-serve-worker")
        if not workers:
            continue
        victim = rng.choice(workers)
        try:
            if rng.random() < 0.5:
                os.kill(victim, signal.SIGKILL)
                stats.add("chaos", "SIGKILL")
            else:
                os.kill(victim, signal.SIGSTOP)
                stop.wait(rng.uniform(1, 4))
                os.kill(victim, signal.SIGCONT)
                stats.add("chaos", "SIGSTOP+SIGCONT")
        except ProcessLookupError:
            pass


def kib(pid, field):
    try:
        m = re.search(rf"^{field}:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M)
        return int(m.group(1)) if m else 0
    except OSError:
        return 0


def sample(pid, port):
    fds = sockets = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            fds += 1
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    sockets += 1
            except OSError:
                pass
    except OSError:
        pass
    conns = Counter()
    states = {"01": "ESTABLISHED", "06": "TIME_WAIT", "08": "CLOSE_WAIT"}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if int(parts[1].split(":")[1], 16) == port:
                    conns[states.get(parts[3], parts[3])] += 1
        except OSError:
            pass
    workers = children(pid, "mlx-serve-worker")
    return {
        "t": time.monotonic(),
        "rss_mib": kib(pid, "VmRSS") / 1024,
        "workers_mib": sum(kib(w, "VmRSS") for w in workers) / 1024,
        "workers": len(workers),
        "fds": fds,
        "sockets": sockets,
        "threads": kib(pid, "Threads"),
        "conns": dict(conns),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--clients", type=int, default=12)
    ap.add_argument("--chaos-every", type=float, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-rss-growth-mib", type=float, default=64)
    ap.add_argument("--max-fd-growth", type=int, default=32)
    args = ap.parse_args()

    bin_dir = ROOT / "target" / "release"
    minilm = ROOT / ".deps" / EMBED
    for p in (bin_dir / "mlx-serve", bin_dir / "mlx-serve-worker", minilm):
        if not p.exists():
            raise SystemExit(f"{p} is missing: run scripts/setup (it builds and fetches the test model)")
    home = Path(tempfile.mkdtemp(prefix="mlx-serve-soak-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLX_SERVE_")}
    env.update(MLX_SERVE_HOME=str(home), MLX_SERVE_WORKER_BIN=str(bin_dir / "mlx-serve-worker"))
    (home / "models").mkdir()
    os.symlink(minilm, home / "models" / EMBED)
    os.symlink(ROOT / "tests" / "fixtures" / "models" / RERANK, home / "models" / RERANK)
    (home / "config.yaml").write_text(CONFIG)
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen([str(bin_dir / "mlx-serve"), "start", "--foreground", "--port", "0",
                             "--preload", EMBED, "--preload", RERANK],
                            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    stop = threading.Event()
    stats = Stats()
    samples = []
    try:
        deadline = time.monotonic() + 60
        port = None
        while port is None and time.monotonic() < deadline:
            m = re.search(r"listening on http://[\d.]+:(\d+)", (home / "server.log").read_text(errors="replace"))
            port = m and int(m.group(1))
            time.sleep(0.2)  # polling the log for the port line
        if not port:
            raise SystemExit("mlx-serve did not start:\n" + (home / "server.log").read_text(errors="replace"))
        for _ in range(20):  # warm up: both models loaded, tokenizers in memory
            call(port, *well_formed(random.Random(0))[1:])
            call(port, "POST", "/v1/rerank", {"model": RERANK, "query": "q", "documents": ["d"]})
        rng = random.Random(args.seed)
        threads = [threading.Thread(target=client, args=(port, stop, stats, args.seed * 1000 + i), daemon=True)
                   for i in range(args.clients)]
        threads += [threading.Thread(target=slow_clients, args=(port, stop, stats, random.Random(rng.random())), daemon=True),
                    threading.Thread(target=control_socket_abuse, args=(home, port, stop, stats, random.Random(rng.random())), daemon=True),
                    threading.Thread(target=chaos, args=(proc.pid, stop, stats, random.Random(rng.random()), args.chaos_every), daemon=True)]
        say(f"soak: {args.minutes} min, {args.clients} clients, chaos every {args.chaos_every} s, "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus, home {home}")
        for t in threads:
            t.start()
        start = time.monotonic()
        end = start + args.minutes * 60
        while time.monotonic() < end:
            s = sample(proc.pid, port)
            samples.append(s)
            with stats.lock:
                done = sum(v for (k, o), v in stats.counts.items() if k != "chaos")
                lost = sum(v for (k, o), v in stats.counts.items() if o == "LOST")
            say(f"{s['t'] - start:6.0f} s  supervisor {s['rss_mib']:6.1f} MiB  workers {s['workers']} "
                f"{s['workers_mib']:7.1f} MiB  fds {s['fds']:4d}  sockets {s['sockets']:4d}  threads {s['threads']:3d}  "
                f"conns {s['conns']}  requests {done}  lost {lost}")
            if proc.poll() is not None:
                raise SystemExit("the supervisor exited during the soak")
            time.sleep(10)  # the sampling period
        stop.set()
        for t in threads:
            t.join(timeout=120)
        time.sleep(12)  # past the header timeout: idle connections are closed by then
        final = sample(proc.pid, port)
        samples.append(final)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()

    warm = samples[min(2, len(samples) - 1)]  # after the first 20 s: buffers and pools settled
    peak = max(s["rss_mib"] for s in samples)
    say("\nrequests by kind and outcome:")
    for (kind, outcome), n in sorted(stats.counts.items()):
        say(f"  {kind:20s} {outcome:22s} {n}")
    lost = sum(v for (k, o), v in stats.counts.items() if o == "LOST")
    fives = sum(v for (k, o), v in stats.counts.items() if o == "5xx")
    total = sum(v for (k, o), v in stats.counts.items() if k not in ("chaos",))
    say(f"\nsupervisor RSS: start {samples[0]['rss_mib']:.1f} MiB, after warm-up {warm['rss_mib']:.1f}, "
        f"peak {peak:.1f}, end {final['rss_mib']:.1f}")
    say(f"workers RSS: peak {max(s['workers_mib'] for s in samples):.1f} MiB, end {final['workers_mib']:.1f} ({final['workers']} workers)")
    say(f"fds: after warm-up {warm['fds']}, max {max(s['fds'] for s in samples)}, end {final['fds']}; "
        f"sockets: after warm-up {warm['sockets']}, max {max(s['sockets'] for s in samples)}, end {final['sockets']}; "
        f"threads end {final['threads']}; connections at the end {final['conns']}")
    say(f"requests: {total}, lost {lost}, unexpected 5xx {fives}; load average now {os.getloadavg()[0]:.1f}")
    for f in stats.failures:
        say("  " + f)
    problems = []
    if lost:
        problems.append(f"{lost} requests lost")
    if fives:
        problems.append(f"{fives} unexpected 5xx")
    if final["rss_mib"] - warm["rss_mib"] > args.max_rss_growth_mib:
        problems.append(f"supervisor RSS grew {final['rss_mib'] - warm['rss_mib']:.1f} MiB")
    if final["fds"] - warm["fds"] > args.max_fd_growth:
        problems.append(f"fds grew by {final['fds'] - warm['fds']}")
    say("soak: " + ("FAIL: " + "; ".join(problems) if problems else "PASS"))
    shutil.rmtree(home, ignore_errors=True)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
