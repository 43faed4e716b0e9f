"""The official `openai` Python client, unmodified, sends one request of 5,000 inputs to a
server whose `limits.max_inputs_per_request` is far smaller; the test stops the model's
worker after the 200 has started. The client must raise a connection error (the body
ended early), not return a result nor see an HTTP error status.

Usage: python streamed_abort_client.py BASE_URL. Prints the error; exits non-zero unless
it is `openai.APIConnectionError`."""
import sys

import openai

base = sys.argv[1]
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=600)
try:
    r = client.embeddings.create(model="all-MiniLM-L6-v2", input=[f"short input number {i}" for i in range(5000)])
except openai.APIConnectionError as e:
    print(f"openai.APIConnectionError ({e.__cause__!r})")
    sys.exit(0)
sys.exit(f"the request succeeded with {len(r.data)} items")
