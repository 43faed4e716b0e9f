"""The official `ollama` Python client, unmodified, managing models on mlx-serve:
pull (streamed progress), list, show, embed, delete.

Usage: python ollama_models.py BASE_URL REPO_ID MISSING_REPO_ID. The server's HF_ENDPOINT
must serve REPO_ID (the tests' fake hub). Exits non-zero on any mismatch."""
import sys

import ollama

from check import check

base, repo, missing = sys.argv[1], sys.argv[2], sys.argv[3]
name = repo.split("/")[-1]
client = ollama.Client(host=base)

statuses = [p.status for p in client.pull(repo, stream=True)]
check(statuses[0] == "pulling manifest", statuses)
check(statuses[-1] == "success", statuses)
progress = [p for p in client.pull(repo, stream=True)]  # a second pull: up to date
check(progress[-1].status == "success", progress)

names = [m.model for m in client.list().models]
check(name in names, names)
size = next(m.size for m in client.list().models if m.model == name)
check(size > 80_000_000, size)

show = client.show(name)
check(show.modelinfo["general.architecture"] == "BertModel", show.modelinfo)
check(show.modelinfo["mlx_serve.metadata"]["repo"] == repo, show.modelinfo)
check(show.capabilities == ["embedding"], show.capabilities)
check(show.details.family == "bert", show.details)

emb = client.embed(model=name, input="pulled through the ollama client")
check(len(emb.embeddings[0]) == 384)

check(client.delete(name).status == "success")
check(name not in [m.model for m in client.list().models])
try:
    client.show(name)
    raise SystemExit("show after delete should fail")
except ollama.ResponseError as e:
    check(e.status_code == 404, e.status_code)

try:
    for _ in client.pull(missing, stream=True):
        pass
    raise SystemExit("pulling a missing repo should fail")
except ollama.ResponseError as e:
    check("not found" in str(e), str(e))
print("ollama client: pull (stream), list, show, embed, delete, missing repo OK")
