"""Clean-ups applied to a parsed rewrite before the faithfulness gate, in synthesis only.

Small generators often wrap a usable rewrite in text that is not content:

* a sentence about the rewrite itself ("This is a rewritten version of the document.", "I made
  the following changes: ..." and the list that follows it);
* a loop: the last sentences repeated, with small variations, until the token limit;
* a last sentence cut off by that limit;
* (reformat) the same entry twice, or a last entry cut off by the limit.

Every clean-up only removes text; none adds or edits a word. A cleaned output can therefore lose
coverage of its source but cannot gain a claim the source does not make, and the gate still
judges what is left (alignment, numbers, entities, length). What was removed is reported so the
journal can show it.

RL rewards do not clean: the policy should learn not to write these things in the first place.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from synpro_megatron.generators.prompts import ReformatEntry

# Sentences about the rewrite rather than the document. A pattern that also matches the source is
# not applied (a document may well talk about "the original text").
META_PATTERNS = tuple(re.compile(p, re.IGNORECASE) for p in (
    r"\b(?:re-?written|paraphrased|revised|reworded|rephrased|cleaned[- ]up|edited|improved|simplified)\s+"
    r"(?:version|document|text|copy)\b",
    r"^\W*(?:I|I've|I have|we|we've|we have)\s+(?:also\s+)?(?:made|have made)\s+(?:the following|a few|some|"
    r"several|these|minor|small|a number of)?\s*(?:changes|edits|corrections|revisions|improvements)\b",
    r"^\W*(?:I|I've|I have)\s+(?:also\s+)?(?:removed|rewrote|rephrased|reworded|edited|corrected|omitted|"
    r"left out|cleaned up|restructured|added|changed|kept|fixed|replaced|simplified)\b",
    r"\b(?:the|this) original (?:document|text|article|passage)\b",
    r"\blet me know\b",
    r"\bhope (?:this|that|it) helps\b",
    r"^\W*(?:note|changes(?: made)?|explanation)\s*:",
))
_LIST_LINE = re.compile(r"^\s*(?:[-*•]|\d{1,2}[.)])\s+")
# a sentence ends after . ! ? and any closing quotes/brackets, before a space and a capital
_SENTENCE_END = re.compile(r"[.!?][\"')\]”’]*(?=\s+[\"'(\[“‘]?[A-Z0-9])")
_TERMINAL = re.compile(r"[.!?…:;][\"')\]”’*]*\s*$")
_WORD = re.compile(r"[a-z0-9][a-z0-9'’]*")
LOOP_NGRAM = 4
LOOP_OVERLAP = 0.5  # a sentence whose 4-grams mostly occurred earlier in the output starts a loop
LOOP_MIN_GRAMS = 4  # ... if it has this many (a short sentence naming "the Millbrook Garden Committee"
#                     again is not a loop; a short one must repeat word for word)


@dataclass
class Cleaned:
    text: str
    removed: list[str] = field(default_factory=list)  # what was cut, one note per clean-up


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("’", "'"))


def _grams(tokens: list[str], n: int = LOOP_NGRAM) -> list[tuple]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def _spans(line: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of a line, closing quotes and brackets included."""
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(line):
        spans.append((start, m.end()))
        start = m.end()
    spans.append((start, len(line)))
    return [(a, b) for a, b in spans if line[a:b].strip()]


def _sentences(line: str) -> list[str]:
    return [line[a:b].strip() for a, b in _spans(line)]


def _active_meta_patterns(source: str) -> list:
    sentences = [s for line in source.splitlines() for s in _sentences(line)]
    return [p for p in META_PATTERNS if not any(p.search(s) for s in sentences)]


def drop_meta_sentences(text: str, source: str) -> tuple[str, int]:
    """Remove sentences about the rewrite; a meta sentence ending in ':' takes the list under it."""
    active = _active_meta_patterns(source)
    out_lines, dropped, skip_list = [], 0, False
    for line in text.splitlines():
        if skip_list and _LIST_LINE.match(line):
            dropped += 1
            continue
        skip_list = False
        sentences = _sentences(line)
        kept = []
        for sentence in sentences:
            if any(p.search(sentence) for p in active):
                dropped += 1
                skip_list = sentence.rstrip().endswith(":")
            else:
                kept.append(sentence)
        if len(kept) == len(sentences):
            out_lines.append(line)  # untouched, spacing and all
        elif kept:
            out_lines.append(" ".join(kept))
    return "\n".join(out_lines).strip(), dropped


def trim_repetition_loop(text: str, source: str) -> tuple[str, int]:
    """Cut the output where it starts repeating itself: at the first sentence (3+ words) most of
    whose 4-grams already occurred earlier in the output and are not repeated in the source.
    Returns the text and the number of characters cut."""
    src_counts = Counter(_grams(_words(source)))
    src_sentences = Counter(" ".join(_words(s)) for line in source.splitlines() for s in _sentences(line))
    seen: set = set()
    seen_sentences: set = set()
    out_lines: list[str] = []
    for line in text.splitlines():
        for start, end in _spans(line):
            toks = _words(line[start:end])
            key = " ".join(toks)
            grams = _grams(toks)
            if len(toks) >= 3:
                if len(grams) >= LOOP_MIN_GRAMS:
                    repeated = sum(g in seen and src_counts[g] < 2 for g in grams) / len(grams)
                else:
                    repeated = float(key in seen_sentences and src_sentences[key] < 2)
                if repeated >= LOOP_OVERLAP:
                    out_lines.append(line[:start])  # the line up to the loop, as written
                    result = "\n".join(out_lines).strip()
                    return result, len(text.strip()) - len(result)
            seen.update(grams)
            seen_sentences.add(key)
        out_lines.append(line)
    return text.strip(), 0


def drop_cut_off_tail(text: str, source: str) -> tuple[str, bool]:
    """Drop a last sentence that stops mid-way (no closing punctuation) when the source's own text
    ends with one: the generator hit its token limit there."""
    text = text.rstrip()
    if not text or _TERMINAL.search(text) or not _TERMINAL.search(source.rstrip()):
        return text, False
    lines = text.splitlines()
    if _LIST_LINE.match(lines[-1]):
        return text, False  # list items often end without punctuation
    pieces = _sentences(lines[-1])
    if len(pieces) > 1:
        lines[-1] = " ".join(pieces[:-1])
    elif len(lines) > 1:
        lines = lines[:-1]
    else:
        return text, False  # a single unfinished sentence: leave it to the gate
    return "\n".join(lines).rstrip(), True


def clean_rephrase(text: str, source: str) -> Cleaned:
    removed = []
    text, n_meta = drop_meta_sentences(text, source)
    if n_meta:
        removed.append(f"{n_meta} sentence(s) about the rewrite")
    text, n_loop = trim_repetition_loop(text, source)
    if n_loop:
        removed.append(f"repetition loop ({n_loop} chars)")
    text, cut = drop_cut_off_tail(text, source)
    if cut:
        removed.append("cut-off last sentence")
    return Cleaned(text, removed)


def clean_reformat_entries(entries: list[ReformatEntry], source: str = "") -> tuple[list[ReformatEntry], list[str]]:
    """Cut a repetition loop inside an entry's content, then drop repeated entries (same content)
    and a last entry whose content stops mid-sentence (when the source itself ends cleanly)."""
    removed, seen, kept = [], set(), []
    for entry in entries:
        content, cut = trim_repetition_loop(entry.content, source)
        if cut:
            removed.append(f"repetition loop in entry {entry.topic[:40]!r} ({cut} chars)")
            if not content:
                continue
            entry = ReformatEntry(entry.topic, content, entry.kind)
        key = " ".join(_words(entry.content))
        if key in seen:
            removed.append(f"repeated entry {entry.topic[:40]!r}")
            continue
        seen.add(key)
        kept.append(entry)
    # (as for a rephrase, only when the source's own text ends with punctuation)
    if kept and not _TERMINAL.search(kept[-1].content) and _TERMINAL.search(source.rstrip()):
        removed.append(f"cut-off entry {kept[-1].topic[:40]!r}")
        kept = kept[:-1]
    return kept, removed
