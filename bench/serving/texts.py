"""Benchmark texts: mixed-length search queries and RAG passages, generated from a seed.

Real traffic mixes lengths (a search box sends a few words, a RAG ingest sends chunks from a
handful of words to ~200 tokens), so every set here is mixed and shuffled unless asked for
fixed lengths. A set where every text has the same length hides padding and half-empty
batches.

Words come from the model's own `vocab.txt` (BERT WordPiece, 21.7k whole lowercase words),
whose order roughly follows corpus frequency ("the", "of", "and", ... first), with
Zipf-Mandelbrot weights 1/(rank + 2.7): the 10 most frequent words are ~19% of the words
drawn, the 100 most frequent ~42%. Real text also holds words the vocabulary lacks
(inflections, compounds, names, numbers) that split into several tokens, so 15% of words
are built from a stem and a `##` suffix piece, hyphenated pairs or numbers. `describe()`
prints what came out (seed 1: 1.2 tokens per word in queries, 1.3 in passages). The same
seed gives the same texts; another seed gives another set of the same shape.
"""
import bisect
import itertools
import random
import re
import statistics
from pathlib import Path

SHORT_WORDS = (3, 12)  # search queries: uniform in words
LONG_WORDS = (6, 120)  # passages: see passage_words()


class Vocabulary:
    """Whole words and suffix pieces of a WordPiece vocab, with Zipf cumulative weights."""

    def __init__(self, vocab_txt: Path):
        lines = vocab_txt.read_text(encoding="utf-8").split("\n")
        start = lines.index("the")  # frequency-ordered words begin here (after [unused], chars)
        self.words = [w for w in lines[start:] if re.fullmatch(r"[a-z]+", w) and (len(w) > 1 or w == "a")]
        self.suffixes = [w[2:] for w in lines[start:] if re.fullmatch(r"##[a-z]{2,}", w)]
        if len(self.words) < 5000:
            raise SystemExit(f"{vocab_txt}: only {len(self.words)} whole words; need a WordPiece vocab")
        # Zipf-Mandelbrot: weight of rank r is 1/(r + 2.7); the shift keeps "the" at ~4% of
        # draws where a pure 1/(r + 1) would give it ~9%.
        self.cum = list(itertools.accumulate(1.0 / (r + 2.7) for r in range(len(self.words))))

    def rank(self, rng: random.Random) -> int:
        return bisect.bisect_left(self.cum, rng.random() * self.cum[-1])

    def word(self, rng: random.Random) -> str:
        return self.words[self.rank(rng)]

    def content_word(self, rng: random.Random) -> str:
        """A word past the 300 most frequent (nouns, verbs: what gets inflected)."""
        while (r := self.rank(rng)) < 300:
            pass
        return self.words[r]

    def token(self, rng: random.Random) -> str:
        """One written word: mostly a vocabulary word, sometimes one the vocabulary splits."""
        x = rng.random()
        if x < 0.85:
            return self.word(rng)
        if x < 0.94:  # inflected / derived / rare word: stem + suffix piece ("riverlands")
            return self.content_word(rng) + rng.choice(self.suffixes)
        if x < 0.97:  # hyphenated compound ("state-owned")
            return self.content_word(rng) + "-" + self.content_word(rng)
        kind = rng.random()  # numbers: years, quantities, decimals, percentages
        if kind < 0.4:
            return str(rng.randint(1900, 2030))
        if kind < 0.7:
            return str(rng.randint(2, 9999))
        if kind < 0.85:
            return f"{rng.randint(0, 99)}.{rng.randint(0, 99)}"
        return f"{rng.randint(1, 100)}%"


def query(vocab: Vocabulary, rng: random.Random, words: int) -> str:
    """A search-box query: lowercase words, sometimes a question mark."""
    text = " ".join(vocab.token(rng) for _ in range(words))
    return text + "?" if rng.random() < 0.3 else text


def passage(vocab: Vocabulary, rng: random.Random, words: int) -> str:
    """Prose: sentences of 5-24 words, capitalized, commas now and then, full stops."""
    sentences, left = [], words
    while left > 0:
        n = min(left, rng.randint(5, 24))
        left -= n
        ws = [vocab.token(rng) for _ in range(n)]
        ws = [w + "," if rng.random() < 0.06 and i < n - 1 else w for i, w in enumerate(ws)]
        sentences.append(" ".join(ws).capitalize() + ".")
    return " ".join(sentences)


def passage_words(rng: random.Random) -> int:
    """Words in one RAG chunk. A chunker fills most chunks close to its limit and leaves a
    tail of short ones (a document's last chunk, a heading, a short paragraph): half the
    chunks 90-120 words, half log-uniform over 6-90. Mean ~68 words, ~90 tokens."""
    lo, hi = LONG_WORDS
    if rng.random() < 0.5:
        return rng.randint(90, hi)
    return round(lo * (90 / lo) ** rng.random())


def mixed_sets(vocab: Vocabulary, seed: int, n_short: int, n_long: int) -> dict:
    """{'short': queries of 3-12 words, 'long': passages of 6-120 words}, each in random order."""
    rng = random.Random(f"mlx-serve-bench/{seed}")
    short = [query(vocab, rng, rng.randint(*SHORT_WORDS)) for _ in range(n_short)]
    long = [passage(vocab, rng, passage_words(rng)) for _ in range(n_long)]
    # Drawn independently, so already in random order; shuffle anyway so a change to the
    # generators above can never sort a set by length.
    rng.shuffle(short)
    rng.shuffle(long)
    return {"short": short, "long": long}


def fixed_sets(vocab: Vocabulary, seed: int, n_short: int, n_long: int) -> dict:
    """Every text the same number of words (7 and 81): the old, flattering shape."""
    rng = random.Random(f"mlx-serve-bench/fixed/{seed}")
    return {
        "fixed 7 words": [query(vocab, rng, 7) for _ in range(n_short)],
        "fixed 81 words": [passage(vocab, rng, 81) for _ in range(n_long)],
    }


def describe(texts: list, tokenizer) -> str:
    """One line: words and tokens (with [CLS]/[SEP]) per text, min / p50 / mean / p90 / max."""
    words = [len(t.split()) for t in texts]
    tokens = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=512)["input_ids"]]

    def spread(xs):
        q = statistics.quantiles(xs, n=10)
        return f"{min(xs)} / {statistics.median(xs):.0f} / {statistics.mean(xs):.1f} / {q[-1]:.0f} / {max(xs)}"

    per_word = (sum(tokens) - 2 * len(tokens)) / sum(words)
    return (f"{len(texts)} texts; words {spread(words)}; tokens {spread(tokens)} "
            f"(min / p50 / mean / p90 / max); {per_word:.2f} tokens per word")
