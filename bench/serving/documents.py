"""Long documents of an exact token count, each a different text, for bench/long_mixed.py.

A document is RAG-style passages (bench/serving/texts.py: sentences of the model's
vocabulary words with the usual share of split words and numbers) joined by blank lines,
so it reads as paragraphs of prose, never one token repeated. Document k of seed s comes
from its own random stream, so every document differs and a rerun gives the same ones.

Its length is counted with the model's own tokenizer.json (no special tokens) and the
text is cut at the end of token number `tokens`, so the server sees that many tokens
plus its special tokens (the cut falls between two words' pieces at worst, which
re-tokenizes to the same count for the WordPiece tokenizers used here; `describe` prints
the counts as tokenized again).
"""
import random
from pathlib import Path

from . import texts


class Documents:
    def __init__(self, vocab: texts.Vocabulary, tokenizer_json: Path, seed: int, tokens: int):
        from tokenizers import Tokenizer
        self.vocab, self.seed, self.tokens = vocab, seed, tokens
        self.tokenizer = Tokenizer.from_file(str(tokenizer_json))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def document(self, k: int) -> str:
        rng = random.Random(f"mlx-serve-bench/long-document/{self.seed}/{k}")
        paragraphs, have = [], 0
        while have < self.tokens:
            p = texts.passage(self.vocab, rng, texts.passage_words(rng))
            paragraphs.append(p)
            have += self.count(p)
        text = "\n\n".join(paragraphs)
        offsets = self.tokenizer.encode(text, add_special_tokens=False).offsets
        return text[:offsets[self.tokens - 1][1]] if len(offsets) > self.tokens else text

    def make(self, n: int) -> list:
        return [self.document(k) for k in range(n)]

    def describe(self, docs: list) -> str:
        counts = [self.count(d) for d in docs]
        words = [len(d.split()) for d in docs]
        return (f"{len(docs)} documents of {min(counts)}-{max(counts)} tokens (no special tokens), "
                f"{min(words)}-{max(words)} words, {sum(d.count(chr(10) * 2) + 1 for d in docs) // len(docs)} "
                f"paragraphs each on average")
