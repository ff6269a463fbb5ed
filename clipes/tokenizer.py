"""CLIP's byte-level BPE tokenizer, without importing open_clip.

The vocabulary is OpenAI's (``bpe_simple_vocab_16e6.txt.gz``: 48,894 merges over 256 byte
symbols), read from the copy installed with open_clip, whose package is located but not
imported (importing it costs a job 2.3 s, see :mod:`clipes.openai_clip`). Text is cleaned
as open_clip's default ("lower") cleaning does: ftfy's fixes, HTML entities resolved
twice, white space collapsed, lower case. Token ids equal open_clip's ``SimpleTokenizer``
(tests compare them on class names, prompts and odd Unicode).
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import os

import torch

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2  # OpenAI's vocabulary: 49,408 ids in all
SOT, EOT = "<start_of_text>", "<end_of_text>"
# letters, single digits, runs of other symbols, and English contractions
PATTERN = r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def default_vocab_path() -> str:
    """The vocabulary file installed with open_clip (its package is found, not imported)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"CLIP's BPE vocabulary ({VOCAB_FILE}) ships with open_clip, which is not "
            f"installed: pip install open_clip_torch")
    return os.path.join(list(spec.submodule_search_locations)[0], VOCAB_FILE)


def byte_symbols() -> dict[int, str]:
    """The 256 byte values as printable characters: printable Latin-1 bytes stand for
    themselves, the others (controls, spaces) for code points from 256 on. The order is
    the vocabulary's: the printable bytes first, then the others, each in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    for extra, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(256 + extra)
    return table


def clean(text: str) -> str:
    """open_clip's "lower" cleaning: ftfy, HTML entities twice, spaces collapsed, lower case."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


class Tokenizer:
    """``tokenizer(texts, context_length=77) -> (N, context_length) int64``: start token,
    BPE ids, end token, zero padding; a longer text is cut and ends with the end token."""

    def __init__(self, vocab_path: str | None = None, context_length: int = 77):
        import regex

        with gzip.open(vocab_path or default_vocab_path()) as f:
            lines = f.read().decode("utf-8").split("\n")[1:N_MERGES + 1]  # line 0: a header
        merges = [tuple(line.split()) for line in lines]
        table = byte_symbols()
        symbols = list(table.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
        self.ids = {s: i for i, s in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.byte_symbol = [table[b] for b in range(256)]  # indexed by byte value
        self.sot, self.eot = self.ids[SOT], self.ids[EOT]
        self.context_length = context_length
        self.pattern = regex.compile(PATTERN, regex.IGNORECASE)
        self._bpe = functools.lru_cache(maxsize=65536)(self._merge)

    def _merge(self, word: str) -> tuple[str, ...]:
        """A word's symbols after applying the merges, lowest rank first; the last symbol
        carries the end-of-word mark."""
        if word in (SOT, EOT):
            return (word,)
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return tuple(parts)

    def encode(self, text: str) -> list[int]:
        out = []
        for piece in self.pattern.findall(clean(text)):
            word = "".join(self.byte_symbol[b] for b in piece.encode("utf-8"))
            out.extend(self.ids[s] for s in self._bpe(word))
        return out

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        n = context_length or self.context_length
        result = torch.zeros(len(texts), n, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [self.sot, *self.encode(text), self.eot]
            if len(ids) > n:
                ids = ids[:n]
                ids[-1] = self.eot
            result[i, :len(ids)] = torch.tensor(ids)
        return result


@functools.lru_cache(maxsize=None)
def openai_tokenizer() -> Tokenizer:
    """The tokenizer of every OpenAI-format CLIP (built once per process: about 0.1 s)."""
    return Tokenizer()
