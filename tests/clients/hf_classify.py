"""huggingface_hub's InferenceClient.text_classification, unmodified, against mlx-serve's
root route (it posts {"inputs", "parameters"} to the base URL, the Inference API's
text-classification task). Usage: python hf_classify.py BASE_URL REFERENCE_JSON, with one
classifier installed (tiny-bert-classify) so requests name no model, as with TEI. Scores are
compared with the softmax (or sigmoid) of transformers' logits in REFERENCE_JSON
(tests/fixtures/reference/). Exits non-zero on any mismatch."""
import json
import sys

import numpy as np
from huggingface_hub import InferenceClient

from check import check

base, ref_path = sys.argv[1], sys.argv[2]
ref = json.load(open(ref_path, encoding="utf-8"))
labels = ref["id2label"]
client = InferenceClient(base_url=base)

compared = 0
for case in ref["cases"]:
    for text, row in zip(case["inputs"], case["rows"]):
        if not isinstance(text, str):
            continue
        logits = np.asarray(row["logits"], dtype=np.float64)
        for fn, want in [(None, np.exp(logits) / np.exp(logits).sum()), ("sigmoid", 1 / (1 + np.exp(-logits))),
                         ("none", logits)]:
            got = client.text_classification(text, function_to_apply=fn)
            check([g.label for g in got] == [labels[i] for i in np.argsort(-want, kind="stable")], (text, fn, got))
            diff = max(abs(g.score - want[labels.index(g.label)]) for g in got)
            check(diff <= 1e-5, (case["name"], fn, diff))
            compared += 1
top = client.text_classification(ref["cases"][0]["inputs"][0], top_k=1)
check(len(top) == 1, top)
print(f"text_classification OK ({compared} compared)")
