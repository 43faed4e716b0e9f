#!/usr/bin/env python3
"""The GPU checks of issue 18, one step per call (bench/gpu/run_checks.sh runs each with
its own time limit and collects what they write):

  refs     sentence-transformers float32 (CPU, this Python) on every fixture case and on
           MiniLM: the references parity compares against
  parity   the real supervisor + worker at one compute dtype (--dtype): every fixture
           model and MiniLM over HTTP, compared with refs
  traffic  issue 28's speed check: mixed-length texts in random order over HTTP, one text
           a request (64 and 256 clients, short texts and passages) and an ingest (64
           passages a request, 8 and 32 clients), the load generator's CPU beside the
           server's (supervisor + worker) for each; sentence-transformers fp16 on the same
           GPU at its best batch size (probed per text set: ST_BATCH_SIZES, default
           32,64,128,256,512); one-request p50 beside ST's one-text p50 on the same texts;
           GPU memory per worker under load (nvidia-smi)
  memory   every model loaded: GPU memory per worker process; then each evicted (control
           socket): what is left
  quant    MiniLM and its 8-bit and 4-bit copies, made here by `mlx-serve quantize` (the
           CUDA worker quantizes): quantize report, GPU memory per worker and texts/s on the
           same mixed traffic (64 clients) for each
  burst    issue 28's memory check: a mixed-length burst (256 one-text clients, --seconds),
           then 15 s idle, sampling every 0.5 s the worker's GPU memory as nvidia-smi sees
           it beside what `ctl workers` reports; once per BURST_VARIANTS entry
           ("name" or "name:VAR=V;cache.key=V", ","-separated: environment variables and
           cache.* config keys for the server)
  report   one report (markdown) from the steps' JSON files

Each step writes <work>/<step>[-<dtype>].json. --no-gpu (a CPU build, e.g. to test this
script) runs sentence-transformers on the CPU in float32 and skips nvidia-smi.
"""
import argparse
import asyncio
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

EMBED_MIN_COS = {"float32": 0.9999, "float16": 0.999, "bfloat16": 0.999, "auto": 0.999}
EMBED_MAX_DIFF_FP32 = 1e-4      # tests/api.rs: the CPU build's tolerance
SCORE_MAX_DIFF = {"float32": 1e-4, "float16": 5e-3, "bfloat16": 1e-2, "auto": 5e-3}
MINILM = "all-MiniLM-L6-v2"
WORDS = ("the of and to in is for on with as by at from that this which model server vector search "
         "query document memory apple silicon metal batch token latency throughput river mountain "
         "city music science history language market energy system network data learning neural "
         "fast local private open source cloud garden winter bread engine travel ocean").split()


def wjson(path, obj):
    Path(path).write_text(json.dumps(obj, indent=1))


def rjson(path):
    return json.loads(Path(path).read_text())


# ---------------------------------------------------------------- server

class Server:
    """mlx-serve start --foreground on port 0 with a fresh home; stderr to a log file."""

    def __init__(self, bin_dir, models, config, log_path, env_extra=None):
        self.home = tempfile.mkdtemp(prefix="mlx-serve-gpu-")
        (Path(self.home) / "models").mkdir()
        for name, path in models.items():
            (Path(self.home) / "models" / name).symlink_to(Path(path).resolve())
        (Path(self.home) / "config.yaml").write_text(config)
        env = dict(os.environ, MLX_SERVE_HOME=self.home, RUST_LOG="warn,mlx_serve::daemon=info", **(env_extra or {}))
        for k in ("MLX_SERVE_CONFIG", "MLX_SERVE_WORKER_BIN", "MLX_SERVE_COMPUTE_DTYPE"):
            env.pop(k, None)
        self.log = open(log_path, "a")
        self.proc = subprocess.Popen([str(Path(bin_dir) / "mlx-serve"), "start", "--foreground", "--port", "0"],
                                     env=env, stderr=subprocess.PIPE, stdout=self.log, text=True)
        for line in self.proc.stderr:
            self.log.write(line)
            m = re.search(r"listening on http://([\d.]+):(\d+)", line)
            if m:
                self.url, self.port = f"http://{m.group(1)}:{m.group(2)}", int(m.group(2))
                break
        else:
            raise SystemExit(f"mlx-serve did not start (exit {self.proc.wait()}); see {log_path}")
        # Keep draining stderr so the server never blocks on a full pipe.
        threading.Thread(target=lambda: [self.log.write(l) for l in self.proc.stderr], daemon=True).start()

    def control(self, cmd, **args):
        """One JSON line on the control socket (docs/running.md)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(120)
            s.connect(str(Path(self.home) / "run" / f"mlx-serve-{self.port}.sock"))
            s.sendall((json.dumps({"cmd": cmd, **args}) + "\n").encode())
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        reply = json.loads(data)
        if not reply.get("ok"):
            raise RuntimeError(f"control {cmd} {args}: {reply.get('error')}")
        return reply.get("result")

    def worker_rows(self):
        result = self.control("workers")
        return result if isinstance(result, list) else result.get("workers", [])

    def worker_pids(self):
        """{model: pid} of the running workers."""
        result = self.control("workers")
        rows = result if isinstance(result, list) else result.get("workers", [])
        return {r["model"]: r["pid"] for r in rows if r.get("pid")}

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def post(url, body, timeout=300):
    import urllib.request
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def config_yaml(dtype, extra=""):
    return (f"models:\n  compute_dtype: {dtype}\n  auto_download: false\n"
            "cache:\n  max_embedding_models: 64\n  max_reranker_models: 64\n  ttl_seconds: 0\n" + extra)


# ---------------------------------------------------------------- GPU memory

def gpu_apps():
    """{pid: MiB} from nvidia-smi's compute processes."""
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=30).stdout
    apps = {}
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit():
            apps[int(parts[0])] = float(parts[1]) if parts[1].replace(".", "").isdigit() else None
    return apps


def gpu_used_mib():
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=30).stdout
    return float(out.split()[0])


# ---------------------------------------------------------------- references

def step_refs(a):
    import torch
    import sentence_transformers
    import transformers
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    refs = {"versions": {"torch": torch.__version__, "sentence_transformers": sentence_transformers.__version__,
                         "transformers": transformers.__version__}, "models": {}}
    for ref_file in sorted(Path(a.refs_dir).glob("*.json")):
        ref = rjson(ref_file)
        if "model" not in ref:  # not one model's reference (half_precision.json: torch's own error)
            continue
        name = ref["model"]
        model_dir = Path(a.models) / name
        if not model_dir.is_dir():
            continue
        if ref.get("kind") not in ("embedding", "rerank"):
            # A classifier's labels and scores (tests/classify.rs checks them on the CPU).
            print(f"refs: {name}: a {ref.get('kind')} reference; not compared here")
            continue
        ignored = flag_the_reference_ignores(model_dir)
        if ignored:
            # transformers' class computes something else than the config says; the generator
            # applied the flag's behaviour itself (tests/fixtures/make_pipeline.py).
            print(f"refs: {name}: transformers ignores {ignored}; using the generator's stored reference")
            refs["models"][name] = stored_reference(ref)
            continue
        try:
            out = device_reference(ref, model_dir)
        except Exception as e:  # noqa: BLE001 - a folder sentence-transformers cannot load
            # The Hub's custom-code layouts (nomic_bert's, `new`) load only with their remote
            # code, which is never run: the generator's own reference (transformers on the
            # native layout, tests/fixtures/make_<family>.py) stands in, marked as such.
            print(f"refs: {name}: sentence-transformers cannot load it here ({type(e).__name__}); "
                  "using the generator's stored reference")
            out = stored_reference(ref)
        refs["models"][name] = out
    wjson(Path(a.work) / "refs.json", refs)
    print(f"refs: {len(refs['models'])} models ({', '.join(refs['models'])})")


def flag_the_reference_ignores(model_dir):
    """A config.json flag that transformers 5.24's class for the model does not honour."""
    cfg = rjson(model_dir / "config.json")
    if cfg.get("model_type") == "qwen3" and cfg.get("use_bidirectional_attention"):
        return "use_bidirectional_attention"  # Qwen3Model builds a causal mask regardless
    return None


def stored_reference(ref):
    """The fixture's own reference, in device_reference's shape."""
    out = {"kind": ref["kind"], "cases": [], "stored": True}
    for case in ref["cases"]:
        if ref["kind"] == "embedding":
            keep = [i for i, t in enumerate(case["texts"]) if t]
            if keep:
                out["cases"].append({"name": case["name"], "texts": [case["texts"][i] for i in keep],
                                     "embeddings": [case["embeddings"][i] for i in keep],
                                     "input_ids": [case["input_ids"][i] for i in keep], "vs_stored_max_diff": 0.0})
        else:
            out["cases"].append({"name": case["name"], "query": case["query"], "documents": case["documents"],
                                 "instruction": case.get("instruction"), "scores": case["scores"],
                                 "vs_stored_max_diff": 0.0})
    return out


def device_reference(ref, model_dir):
    """sentence-transformers (or the causal LM judge) on this machine, float32."""
    import numpy as np
    import torch
    from sentence_transformers import CrossEncoder, SentenceTransformer
    out = {"kind": ref["kind"], "cases": []}
    if ref["kind"] == "embedding":
        # float32 whatever the stored weights (the bundled MiniLM's are float16).
        st = SentenceTransformer(str(model_dir), device="cpu", model_kwargs={"dtype": torch.float32})
        for case in ref["cases"]:
            # OpenAI's API (and mlx-serve) refuse empty strings: tests/api.rs skips them too.
            keep = [i for i, t in enumerate(case["texts"]) if t]
            if not keep:
                continue
            texts = [case["texts"][i] for i in keep]
            emb = st.encode(texts, convert_to_numpy=True, normalize_embeddings=True, batch_size=64)
            stored = np.asarray([case["embeddings"][i] for i in keep], dtype=np.float32)
            stored /= np.linalg.norm(stored, axis=1, keepdims=True)
            out["cases"].append({"name": case["name"], "texts": texts, "embeddings": emb.tolist(),
                                 "input_ids": [case["input_ids"][i] for i in keep],
                                 "vs_stored_max_diff": float(np.abs(emb - stored).max())})
    elif "yes_token_id" in ref:  # Qwen3-Reranker recipe: sigmoid(logit_yes - logit_no), last position
        from transformers import AutoModelForCausalLM
        lm = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        for case in ref["cases"]:
            scores = []
            with torch.no_grad():
                for ids in case["pairs_input_ids"]:
                    logits = lm(torch.tensor([ids])).logits[0, -1]
                    scores.append(float(torch.sigmoid(logits[ref["yes_token_id"]] - logits[ref["no_token_id"]])))
            out["cases"].append({"name": case["name"], "query": case["query"], "documents": case["documents"],
                                 "instruction": case.get("instruction"), "scores": scores,
                                 "vs_stored_max_diff": float(np.abs(np.array(scores) - case["scores"]).max())})
    else:
        ce = CrossEncoder(str(model_dir), device="cpu", model_kwargs={"dtype": torch.float32})
        for case in ref["cases"]:
            scores = ce.predict([(case["query"], d) for d in case["documents"]], convert_to_numpy=True)
            out["cases"].append({"name": case["name"], "query": case["query"], "documents": case["documents"],
                                 "scores": [float(s) for s in scores],
                                 "vs_stored_max_diff": float(np.abs(scores - np.array(case["scores"])).max())})
    return out


# ---------------------------------------------------------------- parity

def parity_case(url, name, ref, case, dtype):
    """(max error, min cos or None, note) of one reference case over HTTP."""
    import numpy as np
    if ref["kind"] == "embedding":
        got = post(url + "/v1/embeddings", {"model": name, "input": case["texts"]})
        g = np.array([d["embedding"] for d in sorted(got["data"], key=lambda d: d["index"])], dtype=np.float64)
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        w = np.asarray(case["embeddings"], dtype=np.float64)
        cos, diff = float((g * w).sum(1).min()), float(np.abs(g - w).max())
        ok = cos >= EMBED_MIN_COS[dtype] and (dtype != "float32" or diff <= EMBED_MAX_DIFF_FP32)
        note = ""
        if not ok:  # tell a tokenizer difference from a numeric one
            tok = post(url + "/v1/tokenize", {"model": name, "input": case["texts"]})
            bad = [i for i, (t, w) in enumerate(zip(tok["data"], case["input_ids"])) if t["token_ids"] != w]
            note = f"tokens differ from the reference tokenizer's for text(s) {bad}" if bad else "same tokens"
        return ok, diff, cos, note
    body = {"model": name, "query": case["query"], "documents": case["documents"], "return_documents": False}
    if case.get("instruction"):
        body["instruction"] = case["instruction"]
    got = post(url + "/v1/rerank", body)
    scores = {r["index"]: r["relevance_score"] for r in got["results"]}
    err = max(abs(scores[i] - s) for i, s in enumerate(case["scores"]))
    return err <= SCORE_MAX_DIFF[dtype], err, None, ""


def step_parity(a):
    refs = rjson(Path(a.work) / "refs.json")["models"]
    models = {n: Path(a.models) / n for n in refs}
    server = Server(a.bin, models, config_yaml(a.dtype), Path(a.work) / f"server-parity-{a.dtype}.log")
    result = {"dtype": a.dtype, "models": {}}
    try:
        for name, ref in refs.items():
            row = {"kind": ref["kind"], "ok": True, "max_diff": 0.0, "failed_cases": []}
            if ref["kind"] == "embedding":
                row["min_cos"] = 1.0
            t0 = time.perf_counter()
            for case in ref["cases"]:
                try:  # one case's failure is reported, the others still run
                    ok, diff, cos, note = parity_case(server.url, name, ref, case, a.dtype)
                except Exception as e:
                    body = e.read().decode(errors="replace")[:300] if hasattr(e, "read") else ""
                    ok, diff, cos, note = False, None, None, f"{type(e).__name__}: {e} {body}"
                if diff is not None:
                    row["max_diff"] = max(row["max_diff"], diff)
                if cos is not None:
                    row["min_cos"] = min(row["min_cos"], cos)
                if not ok:
                    row["ok"] = False
                    row["failed_cases"].append(f"{case['name']}: {note}".rstrip(": "))
            row["seconds"] = round(time.perf_counter() - t0, 2)
            result["models"][name] = row
            print(f"parity {a.dtype} {name}: {json.dumps(row)}", flush=True)
    finally:
        server.stop()
    wjson(Path(a.work) / f"parity-{a.dtype}.json", result)


# ---------------------------------------------------------------- traffic

def make_texts(n, lo, hi, seed):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "." for _ in range(n)]


async def _clients(url, model, texts, clients, seconds, seed, per_request=1):
    """`clients` concurrent clients for `seconds`, each sending one request at a time of
    `per_request` texts (1: a one-text `input`; more: a list, an ingest); (texts, errors, s)."""
    import aiohttp
    done, errors = 0, 0
    start = time.perf_counter()
    stop_at = start + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:
        async def client(i):
            nonlocal done, errors
            rng = random.Random(seed * 1000 + i)
            while time.perf_counter() < stop_at:
                text = rng.choice(texts) if per_request == 1 else rng.sample(texts, per_request)
                body = {"model": model, "input": text, "encoding_format": "base64"}
                async with session.post(url + "/v1/embeddings", json=body) as r:
                    await r.read()
                    if r.status == 200:
                        done += per_request
                    else:
                        errors += 1
        await asyncio.gather(*(client(i) for i in range(clients)))
        return done, errors, time.perf_counter() - start


def _cpu_s():
    import resource
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _clients_process(args, ready=None, go=None, results=None):
    """One load-generator process. With `go`: imports first, says it is ready, waits for the
    common start, then runs and reports (texts, errors, seconds, its CPU seconds)."""
    import aiohttp  # noqa: F401 - imported before the start: its cost is not the load's
    if go is None:
        return asyncio.run(_clients(*args))
    ready.put(os.getpid())
    go.wait()
    cpu0 = _cpu_s()
    done, errors, elapsed = asyncio.run(_clients(*args))
    results.put((done, errors, elapsed, _cpu_s() - cpu0))


def proc_cpu_s(pid):
    """utime + stime of a process (all its threads) from /proc/PID/stat, in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def default_procs(clients):
    """Load-generator processes: three quarters of the cores (12 of 16), at most one per client.
    One Python event loop tops out at a few thousand requests a second, below what the server
    answers on a GPU; the CPU each one used is measured (load_measured), so a reader sees it."""
    return max(1, min(clients, (os.cpu_count() or 4) * 3 // 4))


def load_measured(url, model, texts, clients, seconds, procs=None, per_request=1, server_pids=()):
    """`clients` concurrent clients spread over `procs` processes that start together, for
    `seconds`; texts/s, errors, the load generator's CPU (its processes' getrusage, summed) and
    the server's (/proc/PID/stat of `server_pids`: supervisor + worker) over the same wall time."""
    import multiprocessing
    procs = max(1, min(procs or default_procs(clients), clients))
    ctx = multiprocessing.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    parts = [(url, model, texts, clients // procs + (1 if p < clients % procs else 0), seconds, p, per_request)
             for p in range(procs)]
    children = [ctx.Process(target=_clients_process, args=(part, ready, go, results), daemon=True) for part in parts]
    for c in children:
        c.start()
    try:
        for _ in children:
            ready.get(timeout=120)
        server0 = {pid: proc_cpu_s(pid) for pid in server_pids}
        t0 = time.perf_counter()
        go.set()
        got = [results.get(timeout=seconds + 300) for _ in children]
        wall = time.perf_counter() - t0
        server1 = {pid: proc_cpu_s(pid) for pid in server_pids}
    finally:
        for c in children:
            c.join(timeout=10)
            if c.is_alive():
                c.kill()
    done, errors = sum(r[0] for r in got), sum(r[1] for r in got)
    client_cpu = sum(r[3] for r in got)
    server_cpu = {pid: round(server1[pid] - server0[pid], 2) for pid in server_pids
                  if server0.get(pid) is not None and server1.get(pid) is not None}
    return {"texts_per_s": done / max(r[2] for r in got), "errors": errors, "clients": clients,
            "texts_per_request": per_request, "client_procs": procs, "wall_s": round(wall, 2),
            "client_cpu_s": round(client_cpu, 2), "client_cores": round(client_cpu / wall, 2),
            "server_cpu_s": server_cpu, "server_cores": round(sum(server_cpu.values()) / wall, 2),
            "cores": os.cpu_count()}


def load(url, model, texts, clients, seconds, procs=None):
    """`clients` concurrent one-text clients for `seconds`; (texts/s, errors)."""
    r = load_measured(url, model, texts, clients, seconds, procs)
    return r["texts_per_s"], r["errors"]


def one_request_p50(url, model, texts, passes=2):
    """Median latency of one one-text request at a time, over `texts` `passes` times, after 5."""
    lat = []
    for i in range(5 + passes * len(texts)):
        t0 = time.perf_counter()
        post(url + "/v1/embeddings", {"model": model, "input": texts[i % len(texts)]})
        if i >= 5:
            lat.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(lat)


def st_batch_sizes(no_gpu):
    env = os.environ.get("ST_BATCH_SIZES")
    if env:
        return [int(x) for x in env.split(",")]
    return [16, 32, 64] if no_gpu else [32, 64, 128, 256, 512]


def st_chunk(batch_size, no_gpu):
    """Texts per encode() call: what a user hands sentence-transformers at once. It sorts the
    texts of one call by length before batching them, so a call several batches long gets
    that benefit, as a user's corpus would."""
    return max(4 * batch_size, 128 if no_gpu else 1024)


def _st_pass(st, texts, batch_size, seconds, no_gpu, offset=0):
    """texts/s of encode() over chunks of `texts` (random order, wrapping) for `seconds`."""
    chunk = st_chunk(batch_size, no_gpu)
    ring = texts * (1 + chunk // len(texts) + 1)
    n, i, start = 0, offset, time.perf_counter()
    while True:
        part = ring[i % len(texts):i % len(texts) + chunk]
        st.encode(part, batch_size=batch_size)  # numpy out: the GPU has finished
        n += len(part)
        i += chunk
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed


def st_rates(model_dir, sets, seconds, no_gpu, p50_texts):
    """sentence-transformers in-process on the same device: for each text set, a probe of
    each batch size (after a warm-up chunk at that size), then `seconds` at the best one."""
    import torch
    from sentence_transformers import SentenceTransformer
    device, dtype = ("cpu", torch.float32) if no_gpu else ("cuda", torch.float16)
    st = SentenceTransformer(str(model_dir), device=device, model_kwargs={"dtype": dtype})
    out = {"device": device, "dtype": str(dtype).replace("torch.", ""), "sets": {}}
    probe_s = min(3.0, seconds)
    for name, texts in sets.items():
        probes = {}
        for bs in st_batch_sizes(no_gpu):
            st.encode(texts[:st_chunk(bs, no_gpu)], batch_size=bs)  # warm-up: kernels, allocator
            probes[bs] = _st_pass(st, texts, bs, probe_s, no_gpu, offset=7919 * bs)
            print(f"st {name} batch {bs}: {probes[bs]:.0f} texts/s (probe, {probe_s:.0f} s)", flush=True)
        best = max(probes, key=probes.get)
        rate = _st_pass(st, texts, best, seconds, no_gpu)
        out["sets"][name] = {"batch_size": best, "texts_per_s": rate, "chunk": st_chunk(best, no_gpu),
                             "probes": {str(k): round(v, 1) for k, v in probes.items()}}
        print(f"st {name}: best batch {best}: {rate:.0f} texts/s ({seconds:.0f} s)", flush=True)
    for name, texts in p50_texts.items():
        lat = []
        for i in range(5 + 2 * len(texts)):
            t0 = time.perf_counter()
            st.encode([texts[i % len(texts)]], batch_size=1)
            if not no_gpu:
                torch.cuda.synchronize()
            if i >= 5:
                lat.append((time.perf_counter() - t0) * 1e3)
        out[f"one_text_p50_ms_{name}"] = statistics.median(lat)
    out["one_text_p50_ms"] = out["one_text_p50_ms_short"]
    return out


INGEST_TEXTS = 64  # texts per ingest request
# The supervisor's embedding cache (docs/cache.md, on by default) would answer the repeated
# texts of a load without the model: every throughput measurement turns it off.
NO_EMBEDDING_CACHE = "embedding_cache:\n  memory_mb: 0\n"


def cache_hits(url):
    """mlx_serve_embedding_cache_hits_total (0 when the cache is off), from /metrics."""
    import urllib.request
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(m.group(1)) for m in re.finditer(r"^mlx_serve_embedding_cache_hits_total(?:\{[^}]*\})? (\S+)",
                                                       text, re.M))


def step_traffic(a):
    """Issue 28's speed check: one-text traffic (64, 256 clients) on short texts and passages,
    an ingest (64 passages a request, 8 and 32 clients), one-request p50; the load generator's
    CPU and the server's (supervisor + worker) beside each row; then sentence-transformers at
    its best batch size (probed) on the same texts, and its one-text p50 on the same texts."""
    sets = {"short": make_texts(4096, 3, 12, 1), "long": make_texts(2048, 6, 120, 2)}
    p50_texts = {"short": sets["short"][:100], "long": sets["long"][:100]}
    server = Server(a.bin, {MINILM: Path(a.models) / MINILM}, config_yaml(a.dtype, NO_EMBEDDING_CACHE),
                    Path(a.work) / "server-traffic.log")
    result = {"dtype": a.dtype, "seconds": a.seconds, "server": {}, "gpu_mib_under_load": None,
              "ingest_texts_per_request": INGEST_TEXTS, "embedding_cache": "off (memory_mb: 0)"}
    samples, stop = [], threading.Event()
    runs = [(f"{name}_{c}", name, c, 1) for name in sets for c in (64, 256)]
    runs += [(f"ingest_{c}", "long", c, INGEST_TEXTS) for c in (8, 32)]
    try:
        post(server.url + "/v1/embeddings", {"model": MINILM, "input": "warm up"})
        pids = [server.proc.pid] + list(server.worker_pids().values())
        result["server_pids"] = pids
        if not a.no_gpu:
            def sample():
                while not stop.is_set():
                    apps = gpu_apps()
                    samples.append({m: apps.get(p) for m, p in server.worker_pids().items()})
                    stop.wait(0.5)
            threading.Thread(target=sample, daemon=True).start()
        for key, name, clients, per in runs:
            load_measured(server.url, MINILM, sets[name], clients, 2, per_request=per)  # warm-up: shapes
            row = load_measured(server.url, MINILM, sets[name], clients, a.seconds, per_request=per, server_pids=pids)
            row["texts"] = name
            result["server"][key] = row
            print(f"traffic {key}: {row['texts_per_s']:.0f} texts/s, {row['errors']} errors; load generator used "
                  f"{row['client_cores']:.2f} of {row['cores']} cores ({row['client_procs']} processes), server "
                  f"(supervisor + worker) {row['server_cores']:.2f}", flush=True)
            wjson(Path(a.work) / "traffic.json", result)
        stop.set()
        try:  # a failure here must not lose the rates above nor skip the library's side
            for name, texts in p50_texts.items():
                result[f"one_request_p50_ms_{name}"] = one_request_p50(server.url, MINILM, texts)
            result["one_request_p50_ms"] = result["one_request_p50_ms_short"]
        except Exception as e:
            result["one_request_p50_error"] = f"{type(e).__name__}: {e}"
        try:
            result["embedding_cache_hits"] = cache_hits(server.url)
        except Exception as e:
            result["embedding_cache_hits"] = f"{type(e).__name__}: {e}"
        if samples:
            peaks = [s.get(MINILM) for s in samples if s.get(MINILM)]
            result["gpu_mib_under_load"] = max(peaks) if peaks else None
    finally:
        stop.set()
        server.stop()
        wjson(Path(a.work) / "traffic.json", result)  # kept if the library side runs out of time
    result["st"] = st_rates(Path(a.models) / MINILM, sets, a.seconds, a.no_gpu, p50_texts)
    wjson(Path(a.work) / "traffic.json", result)
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------- memory

def step_memory(a):
    refs = rjson(Path(a.work) / "refs.json")["models"]
    models = {n: Path(a.models) / n for n in refs}
    result = {"dtype": a.dtype, "baseline_mib": None if a.no_gpu else gpu_used_mib(), "loaded": {}, "after_evict": {}}
    server = Server(a.bin, models, config_yaml(a.dtype), Path(a.work) / "server-memory.log")
    try:
        for name in models:
            server.control("load", model=name)
        pids = server.worker_pids()
        apps = {} if a.no_gpu else gpu_apps()
        result["total_loaded_mib"] = None if a.no_gpu else gpu_used_mib()
        for name, pid in pids.items():
            result["loaded"][name] = {"pid": pid, "gpu_mib": apps.get(pid)}
        for name in pids:  # what is loaded (a model past the cache's limits is gone already)
            server.control("evict", model=name)
        left = server.worker_pids()
        apps = {} if a.no_gpu else gpu_apps()
        result["after_evict"] = {"workers": left, "gpu_apps_of_workers": {p: apps.get(p) for p in
                                 [r["pid"] for r in result["loaded"].values()] if p in apps},
                                 "total_mib": None if a.no_gpu else gpu_used_mib()}
    finally:
        server.stop()
    wjson(Path(a.work) / "memory.json", result)
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------- quantized

def step_quant(a):
    sets = {"short": make_texts(4096, 3, 12, 1), "long": make_texts(2048, 6, 120, 2)}
    # The first load of a quantized model on a machine compiles MLX's quantized-matmul
    # kernels (worker/src/engine.rs, GPU_WARM_UP_TOKENS): give it room, and time it.
    server = Server(a.bin, {MINILM: Path(a.models) / MINILM},
                    config_yaml(a.dtype, "limits:\n  worker_start_timeout_seconds: 600\n  request_timeout_seconds: 600\n"
                                + NO_EMBEDDING_CACHE),
                    Path(a.work) / "server-quant.log")
    result = {"dtype": a.dtype, "seconds": a.seconds, "quantize": {}, "models": {}}
    try:
        env = dict(os.environ, MLX_SERVE_HOME=server.home)
        for k in ("MLX_SERVE_CONFIG", "MLX_SERVE_WORKER_BIN"):
            env.pop(k, None)
        for bits in (8, 4):
            t0 = time.perf_counter()
            out = subprocess.run([str(Path(a.bin) / "mlx-serve"), "quantize", MINILM, "--bits", str(bits)],
                                 env=env, capture_output=True, text=True, timeout=150)
            result["quantize"][f"{bits}bit"] = {"rc": out.returncode, "seconds": round(time.perf_counter() - t0, 1),
                                                "output": (out.stdout + out.stderr)[-800:]}
            print(f"quantize {bits}-bit: rc {out.returncode}\n{(out.stdout + out.stderr)[-800:]}", flush=True)
        for name in (MINILM, f"{MINILM}-8bit", f"{MINILM}-4bit"):
            row = {}
            try:
                t0 = time.perf_counter()
                post(server.url + "/v1/embeddings", {"model": name, "input": "warm up"}, timeout=620)
                row["first_request_s"] = round(time.perf_counter() - t0, 1)  # load + warm-up
                for set_name, texts in sets.items():
                    load(server.url, name, texts, 64, 1)  # warm-up: shapes
                    rate, errors = load(server.url, name, texts, 64, a.seconds)
                    row[set_name] = {"texts_per_s": rate, "errors": errors}
                pid = server.worker_pids().get(name)
                row["gpu_mib"] = None if a.no_gpu else gpu_apps().get(pid)
                server.control("evict", model=name)
            except Exception as e:  # one model's failure is reported, the others still run
                row["error"] = f"{type(e).__name__}: {e}"
            result["models"][name] = row
            print(f"quant {name}: {json.dumps(row)}", flush=True)
    finally:
        server.stop()
        wjson(Path(a.work) / "quant.json", result)


# ---------------------------------------------------------------- burst (issue 28)

def _variants():
    out = []
    for item in filter(None, os.environ.get("BURST_VARIANTS", "default").split(",")):
        name, _, env = item.partition(":")
        out.append((name, dict(kv.split("=", 1) for kv in filter(None, env.split(";")))))
    return out


def _memory_metrics(url):
    """MiB per `component` of mlx_serve_memory_usage_bytes for MiniLM (docs/metrics.md)."""
    import urllib.request
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for m in re.finditer(r'mlx_serve_memory_usage_bytes\{component="(\w+)",model="' + MINILM + r'"\} (\S+)', text):
        out[m.group(1) + "_mib"] = round(float(m.group(2)) / 2**20, 1)
    return out


def step_burst(a):
    texts = make_texts(4096, 3, 12, 1) + make_texts(2048, 6, 250, 2)
    random.Random(3).shuffle(texts)
    model_dir = Path(a.models) / MINILM
    weights_mib = sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) / 2**20
    result = {"dtype": a.dtype, "seconds": a.seconds, "weights_mib": round(weights_mib, 1), "variants": {}}
    for name, env in _variants():
        row = {"env": env}
        # "cache.key=value" entries are config keys, the rest environment variables.
        keys = {k: env.pop(k) for k in [k for k in env if k.startswith("cache.")]}
        lines = "".join(f"  {k.removeprefix('cache.')}: {v}\n" for k, v in keys.items())
        config = config_yaml(a.dtype).replace("cache:\n", "cache:\n" + lines)
        row["config"] = keys
        server = Server(a.bin, {MINILM: model_dir}, config, Path(a.work) / f"server-burst-{name}.log", env)
        samples, stop, t0 = [], threading.Event(), [time.perf_counter()]

        def sample():
            while not stop.is_set():
                rows = {r["model"]: r for r in server.worker_rows()}
                r = rows.get(MINILM, {})
                smi = None if a.no_gpu else gpu_apps().get(r.get("pid"))
                ctl = r.get("device_memory_bytes")
                sample = {"t": round(time.perf_counter() - t0[0], 1), "smi_mib": smi,
                          "ctl_mib": None if ctl is None else round(ctl / 2**20, 1)}
                sample.update(_memory_metrics(server.url))
                samples.append(sample)
                stop.wait(0.5)
        try:
            post(server.url + "/v1/embeddings", {"model": MINILM, "input": "warm up"})
            time.sleep(3)  # past the worker's idle release: the loaded figure
            r = {x["model"]: x for x in server.worker_rows()}[MINILM]
            row["loaded_smi_mib"] = None if a.no_gpu else gpu_apps().get(r["pid"])
            threading.Thread(target=sample, daemon=True).start()
            t0[0] = time.perf_counter()
            rate, errors = load(server.url, MINILM, texts, 256, a.seconds)
            burst_end = time.perf_counter() - t0[0]
            row.update(texts_per_s=round(rate), errors=errors, burst_end_s=round(burst_end, 1))
            time.sleep(15)
            stop.set()
            time.sleep(0.6)
            under = [x["smi_mib"] for x in samples if x["t"] <= burst_end and x["smi_mib"]]
            row["peak_smi_mib"] = max(under) if under else None
            for key in ("driver_reserved_mib", "mlx_cache_mib", "mlx_active_mib"):
                seen = [x[key] for x in samples if x["t"] <= burst_end and x.get(key) is not None]
                row["peak_" + key] = max(seen) if seen else None
            for after in (1, 2, 5, 10, 14):
                near = [x for x in samples if x["t"] >= burst_end + after]
                if near:
                    row[f"idle_{after}s"] = {k: v for k, v in near[0].items() if k != "t"}
            row["samples"] = samples
        except Exception as e:  # one variant's failure is reported, the others still run
            row["error"] = f"{type(e).__name__}: {e}"
        finally:
            stop.set()
            server.stop()
        result["variants"][name] = row
        brief = {k: v for k, v in row.items() if k != "samples"}
        print(f"burst {name}: {json.dumps(brief)}", flush=True)
        wjson(Path(a.work) / "burst.json", result)


# ---------------------------------------------------------------- report

def step_report(a):
    from report import render  # bench/gpu/report.py
    text = render(Path(a.work))
    print(text)
    Path(a.work, "report.md").write_text(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["refs", "parity", "traffic", "memory", "quant", "burst", "report"])
    ap.add_argument("--bin", help="folder with mlx-serve and mlx-serve-worker")
    ap.add_argument("--models", help="folder with one model folder per name")
    ap.add_argument("--refs-dir", help="tests/fixtures/reference")
    ap.add_argument("--work", required=True, help="where each step writes its JSON")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--no-gpu", action="store_true")
    a = ap.parse_args()
    Path(a.work).mkdir(parents=True, exist_ok=True)
    {"refs": step_refs, "parity": step_parity, "traffic": step_traffic, "memory": step_memory,
     "quant": step_quant, "burst": step_burst, "report": step_report}[a.step](a)


def _exit_on_sigterm(signum, _frame):
    # `timeout` stops a step with SIGTERM: unwind so each Server.stop() in a `finally` runs.
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    main()
