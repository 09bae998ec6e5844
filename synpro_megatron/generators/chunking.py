"""Split sources longer than the generator can handle, and put the rewritten pieces back together.

Pieces are cut on paragraph boundaries (blank lines, then single newlines), then on sentence
boundaries, and only as a last resort inside a sentence (by tokens), so that each piece is a
self-contained stretch of the document. Sizes are counted with the generator's own tokenizer.
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


def _split_units(text: str, separator_re: str) -> list[str]:
    return [u for u in re.split(separator_re, text) if u.strip()]


def chunk_source(text: str, count_tokens: Callable[[str], int], max_tokens: int,
                 encode: Callable[[str], list[int]] | None = None,
                 decode: Callable[[Sequence[int]], str] | None = None) -> list[str]:
    """Pieces of `text`, each at most `max_tokens` tokens (by `count_tokens`), in order.

    `encode`/`decode` are only needed to cut a single sentence longer than `max_tokens`; without
    them such a sentence is cut by words.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    text = text.strip()
    if not text or count_tokens(text) <= max_tokens:
        return [text] if text else []
    levels = [r"\n\s*\n", r"\n", _SENTENCE_END.pattern]
    return _pack(text, levels, count_tokens, max_tokens, encode, decode)


def _pack(text, levels, count_tokens, max_tokens, encode, decode) -> list[str]:
    if count_tokens(text) <= max_tokens:
        return [text.strip()]
    if not levels:
        return _hard_split(text, count_tokens, max_tokens, encode, decode)
    sep_re, rest = levels[0], levels[1:]
    joiner = "\n\n" if sep_re == r"\n\s*\n" else ("\n" if sep_re == r"\n" else " ")
    units = _split_units(text, sep_re)
    if len(units) == 1:
        return _pack(text, rest, count_tokens, max_tokens, encode, decode)
    pieces: list[str] = []
    current: list[str] = []
    for unit in units:
        unit = unit.strip()
        if count_tokens(unit) > max_tokens:
            if current:
                pieces.append(joiner.join(current))
                current = []
            pieces.extend(_pack(unit, rest, count_tokens, max_tokens, encode, decode))
            continue
        candidate = joiner.join(current + [unit])
        if current and count_tokens(candidate) > max_tokens:
            pieces.append(joiner.join(current))
            current = [unit]
        else:
            current.append(unit)
    if current:
        pieces.append(joiner.join(current))
    return pieces


def _hard_split(text, count_tokens, max_tokens, encode, decode) -> list[str]:
    if encode is not None and decode is not None:
        ids = encode(text)
        return [decode(ids[i:i + max_tokens]).strip() for i in range(0, len(ids), max_tokens)
                if decode(ids[i:i + max_tokens]).strip()]
    words, pieces, current = text.split(), [], []
    for word in words:
        if current and count_tokens(" ".join(current + [word])) > max_tokens:
            pieces.append(" ".join(current))
            current = []
        current.append(word)
    if current:
        pieces.append(" ".join(current))
    return pieces


def join_outputs(kind: str, pieces: list[str]) -> str:
    """One output document from the parsed outputs of a source's pieces, in source order.
    Rephrased pieces are paragraphs; reformat pieces are blocks of entries. Both join with a
    blank line (empty pieces dropped)."""
    return "\n\n".join(p.strip() for p in pieces if p and p.strip())


def piece_token_budget(context_len: int, prompt_overhead: int, max_new_tokens: int, kind: str) -> int:
    """Largest source piece (tokens) that fits the window and can be fully rewritten.

    The prompt (instructions + piece) plus the answer must fit the context. A rephrase is about as
    long as its piece, so the piece is also capped by max_new_tokens (a longer piece would be cut
    off mid-rewrite); reformat answers are short, so only the window limits them.
    """
    room = context_len - prompt_overhead - max_new_tokens
    if room < 16:
        raise ValueError(
            f"generator window too small: context {context_len} - prompt {prompt_overhead} - "
            f"max_new_tokens {max_new_tokens} leaves {room} tokens for the source"
        )
    if kind == "rephrase":
        return max(16, min(room, int(max_new_tokens / 1.1)))
    return room
