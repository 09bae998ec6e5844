"""Heuristic document quality, graded, from datatrove's pretraining filters.

The score of a text is a weighted mix of
  * the fraction of datatrove filters it passes (Gopher quality, Gopher repetition, FineWeb
    quality, C4 quality; their own `filter(Document)` methods, default thresholds), and
  * two soft terms so that texts passing the same filters still differ within a GRPO group:
    the share of the text C4's line filter keeps, and the share of lines that end like a sentence.
An optional classifier (e.g. a FineWeb-Edu or DCLM model on GPU) can be mixed in.

The reward is score(output) - score(source): a rewrite is paid for being cleaner than what it
rewrites, not for the source already being clean. Source scores are cached.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Optional, Sequence

_TERMINAL = tuple(".!?\"')]:;")


@dataclass
class QualityConfig:
    filter_weight: float = 0.7  # fraction of filters passed
    c4_kept_weight: float = 0.15  # share of characters C4's line rules keep
    terminal_weight: float = 0.15  # share of lines ending in terminal punctuation
    classifier: Optional[Callable[[list[str]], list[float]]] = None  # texts -> scores in [0, 1]
    classifier_weight: float = 0.5  # its share of the final score when given
    # a DataMan-style LLM rating by model path (rewards/judge.py; vLLM on GPU, transformers on CPU)
    classifier_model: Optional[str] = None
    classifier_backend: str = "auto"


@dataclass
class QualityResult:
    score: float
    filters: dict = field(default_factory=dict)  # filter name -> passed
    reasons: list = field(default_factory=list)  # why filters failed


@lru_cache(maxsize=1)
def _filters():
    from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                            GopherRepetitionFilter)

    return {"gopher_quality": GopherQualityFilter(), "gopher_repetition": GopherRepetitionFilter(),
            "fineweb_quality": FineWebQualityFilter(), "c4_quality": C4QualityFilter()}


def _run_filter(flt, text: str):
    from datatrove.data import Document

    # A fresh Document per filter: C4's filter rewrites doc.text (drops lines) as a side effect.
    doc = Document(text=text, id="q")
    try:
        verdict = flt.filter(doc)
    except (ZeroDivisionError, ValueError, IndexError) as e:  # datatrove divides by word/line counts
        return False, f"error:{type(e).__name__}", doc.text
    if isinstance(verdict, tuple):
        return bool(verdict[0]), str(verdict[1]), doc.text
    return bool(verdict), "", doc.text


_LIST_ITEM = re.compile(r"^\s*(?:[-*•]|\d{1,3}[.)])\s+\S")


def _lists_as_sentences(text: str) -> str:
    """A list item is judged like a sentence: C4's line rule and the terminal-punctuation term would
    otherwise pay for turning a list into prose, which the rephrase prompt forbids."""
    return "\n".join(line.rstrip() + "." if _LIST_ITEM.match(line) and not line.rstrip().endswith(_TERMINAL)
                     else line for line in text.splitlines())


def heuristic_quality(text: str, config: Optional[QualityConfig] = None) -> QualityResult:
    config = config or QualityConfig()
    text = _lists_as_sentences(text or "")
    if not text.strip():
        return QualityResult(0.0, {name: False for name in _filters()}, ["empty"])
    passed, reasons = {}, []
    c4_kept = 0.0
    for name, flt in _filters().items():
        ok, why, after = _run_filter(flt, text)
        passed[name] = ok
        if not ok:
            reasons.append(f"{name}:{why}")
        if name == "c4_quality":
            c4_kept = min(1.0, len(after.strip()) / max(1, len(text.strip()))) if ok else 0.0
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    terminal = sum(ln.endswith(_TERMINAL) for ln in lines) / max(1, len(lines))
    total = config.filter_weight + config.c4_kept_weight + config.terminal_weight
    score = (config.filter_weight * sum(passed.values()) / len(passed) + config.c4_kept_weight * c4_kept
             + config.terminal_weight * terminal) / total
    return QualityResult(float(score), passed, reasons)


def quality_scores(texts: Sequence[str], config: Optional[QualityConfig] = None) -> list[float]:
    config = config or QualityConfig()
    scores = [heuristic_quality(t, config).score for t in texts]
    classifier = _classifier_for(config)
    if classifier is not None and texts:
        extra = list(classifier(list(texts)))
        if len(extra) != len(texts):
            raise ValueError(f"quality classifier returned {len(extra)} scores for {len(texts)} texts")
        w = config.classifier_weight
        scores = [(1 - w) * s + w * float(c) for s, c in zip(scores, extra)]
    return scores


_SCORERS: dict = {}


def _classifier_for(config: QualityConfig):
    if config.classifier is not None or not config.classifier_model:
        return config.classifier
    key = (config.classifier_model, config.classifier_backend)
    if key not in _SCORERS:  # one engine per process
        from synpro_megatron.rewards.judge import quality_scorer_from_spec

        _SCORERS[key] = quality_scorer_from_spec(config.classifier_model, config.classifier_backend)
    return _SCORERS[key]


_SOURCE_SCORES: dict = {}


def quality_reward(sources: Sequence[str], outputs: Sequence[str],
                   config: Optional[QualityConfig] = None) -> list[float]:
    """score(output) - score(source), per pair (source scores cached by content)."""
    config = config or QualityConfig()
    keys = [(hashlib.sha1(s.encode("utf-8", "replace")).hexdigest(), id(config.classifier), config.classifier_model)
            for s in sources]
    first_index = {}
    for i, k in enumerate(keys):
        if k not in _SOURCE_SCORES:
            first_index.setdefault(k, i)
    missing = sorted(first_index.values())
    if missing:
        fresh = quality_scores([sources[i] for i in missing], config)
        for i, s in zip(missing, fresh):
            _SOURCE_SCORES[keys[i]] = s
        if len(_SOURCE_SCORES) > 50_000:  # bounded memory over long runs
            _SOURCE_SCORES.clear()
            for i, s in zip(missing, fresh):
                _SOURCE_SCORES[keys[i]] = s
    out_scores = quality_scores(outputs, config)
    return [o - _SOURCE_SCORES[k] for o, k in zip(out_scores, keys)]
