"""The official `ollama` Python client, unmodified, managing models on mlx-serve:
pull (streamed progress), list, show, embed, delete.

Usage: python ollama_models.py BASE_URL REPO_ID MISSING_REPO_ID. The server's HF_ENDPOINT
must serve REPO_ID (the tests' fake hub). Exits non-zero on any mismatch."""
import sys

import ollama

base, repo, missing = sys.argv[1], sys.argv[2], sys.argv[3]
name = repo.split("/")[-1]
client = ollama.Client(host=base)

statuses = [p.status for p in client.pull(repo, stream=True)]
assert statuses[0] == "pulling manifest", statuses
assert statuses[-1] == "success", statuses
progress = [p for p in client.pull(repo, stream=True)]  # a second pull: up to date
assert progress[-1].status == "success", progress

names = [m.model for m in client.list().models]
assert name in names, names
size = next(m.size for m in client.list().models if m.model == name)
assert size > 80_000_000, size

show = client.show(name)
assert show.modelinfo["general.architecture"] == "BertModel", show.modelinfo
assert show.modelinfo["mlx_serve.metadata"]["repo"] == repo, show.modelinfo
assert show.capabilities == ["embedding"], show.capabilities
assert show.details.family == "bert", show.details

emb = client.embed(model=name, input="pulled through the ollama client")
assert len(emb.embeddings[0]) == 384

assert client.delete(name).status == "success"
assert name not in [m.model for m in client.list().models]
try:
    client.show(name)
    raise SystemExit("show after delete should fail")
except ollama.ResponseError as e:
    assert e.status_code == 404, e.status_code

try:
    for _ in client.pull(missing, stream=True):
        pass
    raise SystemExit("pulling a missing repo should fail")
except ollama.ResponseError as e:
    assert "not found" in str(e), str(e)
print("ollama client: pull (stream), list, show, embed, delete, missing repo OK")
