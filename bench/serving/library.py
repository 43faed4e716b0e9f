"""sentence-transformers in this process, called the way its users call it.

`model.encode(texts, batch_size=32)` (or another `batch_size`, bench/families.py finds its best) on a list (it sorts the list by length, so its batches
carry little padding), torch CPU with its default threads, no HTTP and no client. In a
timed run it encodes successive chunks of 256 texts from the start of the same stream the
servers get (each chunk one `encode` call, as an ingest loop would make); with a fixed
number of texts, one call on all of them.

It is also the reference the servers' answers are checked against (`vectors`).
"""
import os
import time
from pathlib import Path

import numpy as np

CHUNK = 256


def _put_in_moe_reference(model, model_dir: Path) -> bool:
    """A real-size nomic-embed-text-v2-moe shape (bench/real_size_shape.py) keeps the MoE blocks that
    transformers lacks beside its plain NomicBertModel body: they are put in here."""
    spec = model_dir / "nomic_moe_reference.json"
    if not spec.exists():
        return False
    import json
    import sys

    from safetensors.torch import load_file
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "fixtures"))
    import nomic_moe_reference as ref
    body = model[0].model
    ref.apply_v2_moe(body, **json.loads(spec.read_text()))
    missing, unexpected = body.load_state_dict(load_file(model_dir / "nomic_moe_reference.safetensors"), strict=False)
    if unexpected or [k for k in missing if "rotary" not in k]:
        raise SystemExit(f"{model_dir}: MoE reference weights do not fit: {missing} {unexpected}")
    body.eval()
    return True


class SentenceTransformers:
    def __init__(self, model_dir, batch_size=32):
        self.batch_size = batch_size
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no weight-loading bars in the report
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        import sentence_transformers
        import torch
        self.model = sentence_transformers.SentenceTransformer(str(model_dir), device="cpu")
        moe = _put_in_moe_reference(self.model, Path(model_dir))
        dims = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dims = dims()
        self.label = (f"sentence-transformers {sentence_transformers.__version__} (torch {torch.__version__}, "
                      f"{torch.get_num_threads()} threads of {os.cpu_count()} CPUs)"
                      + (", NomicBertModel with tests/fixtures/nomic_moe_reference.py's MoE blocks" if moe else ""))
        self._cache = {}

    def encode(self, texts):
        return self.model.encode(texts, batch_size=self.batch_size)

    def throughput(self, texts, seconds=None, count=None) -> dict:
        """texts/s over a timed stream of 256-text `encode` calls, or one call on `count` texts."""
        self.encode(texts[-64:])  # warm-up on texts outside the measured prefix
        if count is not None:
            batch = [texts[i % len(texts)] for i in range(count)]
            start = time.perf_counter()
            self.encode(batch)
            return {"rate": count / (time.perf_counter() - start), "done": count}
        done, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            # Near the end, a smaller last call (down to one batch of 32), so a slow machine
            # does not overrun the window by a whole 256-text call.
            left = done / elapsed * (seconds - elapsed) if done else CHUNK
            n = max(32, min(CHUNK, round(left / 32) * 32))
            self.encode([texts[(done + k) % len(texts)] for k in range(n)])
            done += n
        return {"rate": done / (time.perf_counter() - start), "done": done}

    def latency(self, texts, n=100, warm=10, budget_s=15) -> list:
        """Seconds per `encode([text])`, one text at a time (n texts, or fewer past budget_s)."""
        for t in texts[-warm:]:
            self.encode([t])
        out, start = [], time.perf_counter()
        for t in texts[:n]:
            if len(out) >= 20 and time.perf_counter() - start > budget_s:
                break
            t0 = time.perf_counter()
            self.encode([t])
            out.append(time.perf_counter() - t0)
        return out

    def vectors(self, texts) -> np.ndarray:
        """Reference vectors (cached per text) for checking servers' answers."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo:
            for t, v in zip(todo, self.encode(todo), strict=True):
                self._cache[t] = v
        return np.stack([self._cache[t] for t in texts])
