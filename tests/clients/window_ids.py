"""The windows chunked embedding should send for a text, computed independently of the
server: the text's tokens from the model's tokenizer.json (Hugging Face `tokenizers`, no
special tokens, no truncation), cut by hand into windows of the model's limit less its
special tokens, each starting `overlap` tokens before the previous one ends, and each
wrapped in the tokens a single text gets (the post-processor's: the special tokens before
and after the text's own in the encoding of a one-letter text).

Usage: window_ids.py MODEL_DIR MAX_TOKENS OVERLAP < text   →   JSON list of id lists
"""

import json
import sys

from tokenizers import Tokenizer

model_dir, max_tokens, overlap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
tok.no_truncation()
tok.no_padding()

probe = tok.encode("x", add_special_tokens=True)
mask = probe.special_tokens_mask
first, last = mask.index(0), len(mask) - mask[::-1].index(0)
before, after = probe.ids[:first], probe.ids[last:]
window = max_tokens - len(before) - len(after)

ids = tok.encode(sys.stdin.read(), add_special_tokens=False).ids
windows = []
start = 0
while True:
    part = ids[start : start + window]
    windows.append(before + part + after)
    if start + window >= len(ids):
        break
    start += window - overlap
print(json.dumps(windows))
