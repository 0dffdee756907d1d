"""An offline, CLIP-compatible tokenizer for the presets.

No vocabulary can be downloaded here, so the presets use a *stand-in* vocabulary: every byte of the
byte-level alphabet (alone and as an end of word) plus whole-word merges for a small list of English words
(the shapes benchmark's words among them). It tokenizes any text, with CLIP's rules (lower-casing, byte-level
BPE, ``</w>`` word ends, start/end tokens, 77 positions). It is *not* the CLIP-L vocabulary: a real
checkpoint loaded from a directory or hub id uses its own tokenizer.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

__all__ = ["STAND_IN_WORDS", "build_offline_tokenizer"]

# Words that get a single token each; anything else falls back to byte-level pieces.
STAND_IN_WORDS: tuple[str, ...] = (
    "a",
    "an",
    "and",
    "the",
    "of",
    "on",
    "in",
    "with",
    "at",
    "photo",
    "picture",
    "image",
    "scene",
    "background",
    "small",
    "large",
    "big",
    "red",
    "green",
    "blue",
    "yellow",
    "orange",
    "purple",
    "white",
    "black",
    "grey",
    "gray",
    "pink",
    "brown",
    "circle",
    "circles",
    "square",
    "squares",
    "triangle",
    "triangles",
    "star",
    "stars",
    "ring",
    "rings",
    "cross",
    "crosses",
    "disk",
    "box",
    "stripes",
    "striped",
    "dotted",
    "dots",
    "checkered",
    "plain",
    "textured",
    "wood",
    "stone",
    "grass",
    "sky",
    "water",
    "sand",
    "front",
    "behind",
    "left",
    "right",
    "top",
    "bottom",
    "center",
    "one",
    "two",
    "three",
    "four",
    "five",
    "shape",
    "shapes",
    "object",
    "objects",
    "house",
    "dog",
    "cat",
    "car",
    "tree",
    "person",
    "room",
    "street",
    "city",
    "high",
    "quality",
    "detailed",
)

_BOS = "<|startoftext|>"
_EOS = "<|endoftext|>"


@functools.lru_cache(maxsize=1)
def _byte_alphabet() -> tuple[str, ...]:
    """GPT-2/CLIP's reversible byte -> printable-unicode map, in byte order."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    table = dict(zip(printable, codes))
    return tuple(chr(table[b]) for b in range(256))


def _vocab_and_merges(words: tuple[str, ...]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    vocab: dict[str, int] = {}

    def add(token: str) -> None:
        if token not in vocab:
            vocab[token] = len(vocab)

    for char in _byte_alphabet():
        add(char)
    for char in _byte_alphabet():
        add(char + "</w>")
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            pair = (left, right)
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
            left = left + right
            add(left)
    add(_BOS)
    add(_EOS)
    return vocab, merges


def build_offline_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """Build the stand-in CLIP tokenizer (no download).

    Args:
        model_max_length: Number of token positions (CLIP uses 77).

    Returns:
        A ``transformers.CLIPTokenizer`` whose vocabulary size is ``len(tokenizer)``.
    """
    # Here, not at the top: `import hgc_tune.policy` imports this package, and must not import transformers
    # (nor the torch it brings).
    from transformers import CLIPTokenizer

    vocab, merges = _vocab_and_merges(STAND_IN_WORDS)
    # The merges go to `tokenizers`' BPE, which takes (left, right) pairs; CLIPTokenizer's annotation
    # (`str | list[str]`) does not list that form.
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,  # type: ignore[arg-type]
        model_max_length=model_max_length,
    )
