"""The servers under test, started as users start them and always stopped.

- `MlxServe`: the real CLI (`mlx-serve pull FOLDER --name NAME`, then `mlx-serve start
  --foreground --port 0 --preload NAME`) in a throwaway `MLX_SERVE_HOME`, so nothing of the
  user's own home, config or environment (`MLX_SERVE_*`) leaks in. One home serves several
  starts with different `config.yaml` files (batching on, batching off).
- `Infinity`: `infinity_emb v2 --engine torch --device cpu` from a scratch venv, offline
  (`HF_HUB_OFFLINE=1`) and without telemetry (`DO_NOT_TRACK=1`).

Each server runs in a session of its own, so a Ctrl-C on the benchmark reaches only the
benchmark, whose `finally` stops the server: SIGTERM, then SIGKILL for any process of its
tree still alive after the grace period.
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from . import rss


class ServerFailed(RuntimeError):
    pass


class Process:
    """A server process with its log file, stopped with SIGTERM then SIGKILL."""

    def __init__(self, argv, env, log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.proc.pid

    def log_tail(self, lines=10) -> str:
        """The log's first and last lines (an error is often first, a backtrace after it)."""
        text = self.log_path.read_text(errors="replace").splitlines()
        if len(text) > 2 * lines:
            text = text[:lines] + ["    ..."] + text[-lines:]
        return "\n".join("    " + line for line in text)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace_s: float = 40):
        pids = rss.tree(self.pid) if self.alive() else []
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        for pid in [self.pid] + pids:  # whatever of the tree outlived the grace period
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.proc.wait()
        self._log.close()


def wait_until(pred, timeout_s: float, what: str, proc: Process):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise ServerFailed(f"{what}: process exited ({proc.proc.returncode}); log:\n{proc.log_tail()}")
        value = pred()
        if value:
            return value
        time.sleep(0.2)  # polling a log file / health route; nothing to synchronise with
    raise ServerFailed(f"{what}: not ready after {timeout_s:.0f} s; log:\n{proc.log_tail()}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class MlxServe:
    """mlx-serve in an isolated home with one model imported from a folder."""

    def __init__(self, bin_dir: Path, model_dir: Path, model: str):
        self.bin = bin_dir / "mlx-serve"
        for b in (self.bin, bin_dir / "mlx-serve-worker"):
            if not b.is_file():
                raise SystemExit(f"{b} not found: build first (cargo build --release --locked --workspace)")
        self.model = model
        self.home = Path(tempfile.mkdtemp(prefix="mlx-serve-bench-"))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MLX_SERVE_")}
        self.env["MLX_SERVE_HOME"] = str(self.home)
        # The embedding cache is off: a benchmark measures computing vectors (the library
        # beside it has no cache), and a text that came round again would be answered from
        # memory. A config.yaml's `embedding_cache` cannot turn it back on (env wins).
        self.env["MLX_SERVE_EMBEDDING_CACHE_MB"] = "0"
        self.process = None
        self.url = None
        out = subprocess.run([str(self.bin), "pull", str(model_dir), "--name", model],
                             env=self.env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"mlx-serve pull {model_dir} failed:\n{out.stdout}{out.stderr}")

    def version(self) -> str:
        out = subprocess.run([str(self.bin), "--version"], env=self.env, capture_output=True, text=True,
                             check=False)
        return out.stdout.strip()

    def start(self, config_yaml: str, label: str) -> str:
        (self.home / "config.yaml").write_text(config_yaml)
        self.process = Process([str(self.bin), "start", "--foreground", "--port", "0", "--preload", self.model],
                               self.env, self.home / f"{label}.log")

        def listening():
            m = re.search(r"listening on (http://[\d.]+:\d+)", self.process.log_path.read_text(errors="replace"))
            return m and m.group(1)

        self.url = wait_until(listening, 60, f"mlx-serve ({label})", self.process)
        return self.url

    @property
    def pid(self) -> int:
        return self.process.pid

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            return r.read().decode()

    def stop(self):
        if self.process:
            self.process.stop()
            self.process = None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)


def free_port() -> int:
    """A loopback port free right now (Infinity takes a port number, not 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Infinity:
    """Infinity (michaelfeil/infinity) from a venv holding `infinity-emb[server,torch]`."""

    INSTALL = 'python3 -m venv {venv} && {venv}/bin/pip install "infinity-emb[server,torch]"'

    def __init__(self, venv: Path, model_dir: Path, model: str = "minilm"):
        self.venv, self.model_dir, self.model = venv, model_dir, model
        self.bin = venv / "bin" / "infinity_emb"
        self.process = None
        self.url = None
        self.logdir = None

    def missing(self):
        """Why the row cannot run, or None."""
        if not self.bin.is_file():
            return f"no {self.bin} (install once: {self.INSTALL.format(venv=self.venv)})"
        return None

    def version(self) -> str:
        out = subprocess.run([str(self.venv / "bin" / "python"), "-c",
                              "import importlib.metadata as m; print(m.version('infinity-emb'), m.version('torch'))"],
                             capture_output=True, text=True, check=False)
        parts = out.stdout.split()
        return f"infinity-emb {parts[0]} (torch {parts[1]})" if len(parts) == 2 else "infinity-emb (version unknown)"

    def start(self) -> str:
        port = free_port()
        self.logdir = Path(tempfile.mkdtemp(prefix="infinity-bench-"))
        env = dict(os.environ, DO_NOT_TRACK="1", INFINITY_ANONYMOUS_USAGE_STATS="0", HF_HUB_OFFLINE="1",
                   HF_HOME=str(self.logdir / "hf"))
        self.process = Process([str(self.bin), "v2", "--model-id", str(self.model_dir),
                                "--served-model-name", self.model, "--engine", "torch", "--device", "cpu",
                                "--host", "127.0.0.1", "--port", str(port), "--url-prefix", "/v1"],
                               env, self.logdir / "infinity.log")
        self.url = f"http://127.0.0.1:{port}"
        # Torch import and the model's warm-up take tens of seconds on a busy 2-core machine.
        wait_until(lambda: http_ok(self.url + "/health"), 300, "Infinity", self.process)
        return self.url

    @property
    def pid(self) -> int:
        return self.process.pid

    def cleanup(self):
        if self.process:
            self.process.stop()
            self.process = None
        if self.logdir:
            shutil.rmtree(self.logdir, ignore_errors=True)
