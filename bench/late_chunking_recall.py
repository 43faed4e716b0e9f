#!/usr/bin/env python3
"""Retrieval with late chunking vs naive chunking (docs/long-documents.md, issue 27).

Corpus: Python standard-library module documentation as `pydoc` renders it (the
interpreter running this script), each module's text cut into paragraphs at blank lines.
Chunks are those paragraphs, the same for both methods:
  - naive: each paragraph embedded alone (`POST /v1/embeddings`);
  - late: each module's document run through the model once (in overlapping
    macro-windows past the model's window) and each paragraph pooled from its span
    (`POST /v1/late_chunking` with `spans`).
Queries name the module and paraphrase nothing: "<module> module: <the paragraph's first
words>", for paragraphs that do not themselves name the module, so a chunk can only tie
the query's module name to its text through its document. recall@10: the share of
queries whose paragraph is among the 10 chunks (of the whole corpus) closest by cosine.

Honest limits: the only real weights here are all-MiniLM-L6-v2, a 256-token model, not a
long-context one; a module's document spans several macro-windows, so a paragraph sees
only its window's context (about 250 tokens around it), not the whole module. The
late-chunking paper measures long-context models (jina-embeddings-v2, 8k tokens), where a
chunk sees its whole document. This is a retrieval-quality measurement, not a speed one.

Usage (from the repository root, after cargo build --release):
  .deps/ref-venv/bin/python bench/late_chunking_recall.py [--modules 40] [--url URL]
Without --url it starts mlx-serve with .deps/all-MiniLM-L6-v2 in a temporary home.
"""
import argparse
import importlib
import json
import pydoc
import re
import sys
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving.servers import MlxServe  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL = "all-MiniLM-L6-v2"
MODULES = ["json", "csv", "argparse", "logging", "pathlib", "subprocess", "shutil", "tempfile", "sqlite3",
           "datetime", "collections", "itertools", "functools", "heapq", "bisect", "random", "statistics",
           "decimal", "fractions", "textwrap", "difflib", "zipfile", "tarfile", "gzip", "hashlib", "hmac",
           "secrets", "socket", "selectors", "threading", "queue", "sched", "contextlib", "abc", "enum",
           "dataclasses", "typing", "inspect", "pickle", "copy", "pprint", "string", "struct", "codecs",
           "unicodedata", "locale", "gettext", "calendar", "uuid", "ipaddress"]
MAX_CHARS = 6000  # per module document: a few MiniLM windows


def post(url: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def document(name: str):
    """The module's pydoc text (first MAX_CHARS, cut at a paragraph) and its paragraphs' spans."""
    text = pydoc.render_doc(importlib.import_module(name), renderer=pydoc.plaintext)
    text = text[:MAX_CHARS].rsplit("\n\n", 1)[0]
    spans = []
    for m in re.finditer(r"\S(?:.|\n(?!\s*\n))*", text):
        if len(m.group().split()) >= 6:
            spans.append((m.start(), m.end()))
    return text, spans


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modules", type=int, default=40)
    ap.add_argument("--url")
    args = ap.parse_args()
    server = None
    url = args.url
    if not url:
        server = MlxServe(ROOT / "target/release", ROOT / ".deps" / MODEL, MODEL)
        url = server.start("limits:\n  max_inputs_per_request: 4096\n", "recall")
    try:
        chunks, naive, late, queries = [], [], [], []
        for name in MODULES[:args.modules]:
            text, spans = document(name)
            if not spans:
                continue
            paras = [text[s:e] for s, e in spans]
            first = len(chunks)
            chunks += [(name, p) for p in paras]
            r = post(url, "/v1/late_chunking", {"model": MODEL, "input": text, "spans": [list(s) for s in spans]})
            late += [d["embedding"] for d in r["data"]]
            r = post(url, "/v1/embeddings", {"model": MODEL, "input": paras, "encoding_format": "float"})
            naive += [d["embedding"] for d in r["data"]]
            for k, p in enumerate(paras):
                if name.lower() not in p.lower():
                    queries.append((f"{name} module: " + " ".join(p.split()[:8]), first + k))
        qv = post(url, "/v1/embeddings", {"model": MODEL, "input": [q for q, _ in queries],
                                          "encoding_format": "float"})["data"]
        q = np.array([d["embedding"] for d in qv])
        print(f"python {sys.version.split()[0]}, {len(chunks)} paragraphs of {args.modules} modules, "
              f"{len(queries)} queries naming the module; model {MODEL} (256-token window, not long-context)")
        for label, vecs in (("naive chunking", naive), ("late chunking", late)):
            m = np.array(vecs)
            m /= np.linalg.norm(m, axis=1, keepdims=True)
            top = np.argsort(-(q @ m.T), axis=1)[:, :10]
            hits = sum(target in row for row, (_, target) in zip(top, queries))
            print(f"{label}: recall@10 {hits / len(queries):.3f} ({hits}/{len(queries)})")
    finally:
        if server:
            server.stop()


if __name__ == "__main__":
    main()
