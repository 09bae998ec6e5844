"""Model-based scorers through a generation backend: an LLM faithfulness judge with the paper's
per-entry labels, and a DataMan-style quality rating.

Both take any object with the generation-backend interface (generators/backends.py:
`generate(conversations, n, temperature, top_p, max_new_tokens, seed) -> list[list[str]]`): vLLM on
GPU (a Qwen3 judge path the user gives), transformers on CPU. The rewards do not import the
generators; `build_backend` does so lazily, only when a user names a model.

LLMJudge: for each output unit (a sentence, or a reformat entry) one greedy request asks for one of
Faithful / Unfaithful_Topic / Unfaithful_Content against the source (cut to `max_source_chars`, as the
paper's verifier cuts at 3,000). The score is the share of units labelled Faithful, as the paper's
reformat reward. An answer that names no label counts as Unfaithful_Content (a judge that cannot
answer must not pass text) and is logged in `last_unparsed`.

LLMQualityScorer: asks for an "Overall Score: N" from 1 to 5 over a list of criteria (DataMan's
all-rating mode), greedy, few tokens; score = (N - 1) / 4 in [0, 1]; an unparsable answer scores 0.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

from synpro_megatron.rewards.verifier import LABELS

JUDGE_SYSTEM = "You are a strict fact-checker. You compare a claim with a source document and answer with one label."
JUDGE_TEMPLATE = """Source document:
{source}

Claim ({unit_name}):
{unit}

Label the claim against the source:
- Faithful: everything the claim says is stated in the source (rewording, shortening and reordering are fine).
- Unfaithful_Topic: the claim's topic or title does not describe its content or the source.
- Unfaithful_Content: the claim changes, adds or contradicts a fact (a number, name, date, unit, negation, quantifier or who did what).
Answer with the label only."""

QUALITY_SYSTEM = "You rate documents as pretraining data for a language model."
QUALITY_TEMPLATE = """Rate the text below from 1 (worst) to 5 (best) on accuracy, coherence, language consistency, semantic density, knowledge novelty, topic focus, creativity, professionalism, style consistency, grammatical diversity, structural standardization, originality, sensitivity and overall usefulness for training.

Text:
{text}

Answer with one line: "Overall Score: N" where N is 1, 2, 3, 4 or 5."""

_LABEL_RE = re.compile(r"unfaithful[\s_-]*(topic|content)|\bfaithful\b", re.IGNORECASE)
_SCORE_RE = re.compile(r"overall\s*score\s*[:=]?\s*([1-5])|\b([1-5])\s*(?:/\s*5|out of 5)|^\s*([1-5])\b",
                       re.IGNORECASE | re.MULTILINE)


def parse_label(answer: str) -> Optional[str]:
    """The first label an answer names (Unfaithful_* before the bare word Faithful inside it)."""
    m = _LABEL_RE.search(answer or "")
    if not m:
        return None
    if m.group(1):
        return "Unfaithful_Topic" if m.group(1).lower() == "topic" else "Unfaithful_Content"
    return "Faithful"


def parse_overall_score(answer: str) -> Optional[int]:
    m = _SCORE_RE.search(answer or "")
    if not m:
        return None
    return int(next(g for g in m.groups() if g))


def build_backend(model: str, backend: str = "auto", **kwargs):
    """A generation backend for a judge or scorer model path (vLLM on GPU, transformers on CPU)."""
    from synpro_megatron.generators.backends import make_backend

    return make_backend(backend, model, **kwargs)


class LLMJudge:
    """Callable judge(source, output) -> share of Faithful units; `judge_units` gives the labels."""

    def __init__(self, backend, max_source_chars: int = 3000, max_new_tokens: int = 8, batch_units: int = 64):
        self.backend = backend
        self.max_source_chars = max_source_chars
        self.max_new_tokens = max_new_tokens
        self.batch_units = batch_units
        self.last_unparsed: list[str] = []

    def messages(self, source: str, unit: str, unit_name: str = "a sentence of a rewrite") -> list[dict]:
        return [{"role": "system", "content": JUDGE_SYSTEM},
                {"role": "user", "content": JUDGE_TEMPLATE.format(source=source[:self.max_source_chars].strip(),
                                                                  unit=unit.strip(), unit_name=unit_name)}]

    def judge_units(self, pairs: Sequence[tuple[str, str]], unit_name: str = "a sentence of a rewrite") -> list[str]:
        """One label per (source, unit) pair, batched through the backend."""
        labels: list[str] = []
        self.last_unparsed = []
        for b in range(0, len(pairs), self.batch_units):
            chunk = pairs[b:b + self.batch_units]
            answers = self.backend.generate([self.messages(s, u, unit_name) for s, u in chunk], n=1, temperature=0.0,
                                            top_p=1.0, max_new_tokens=self.max_new_tokens, seed=0)
            for (group,) in answers:
                label = parse_label(group)
                if label is None:
                    self.last_unparsed.append(group)
                    label = "Unfaithful_Content"
                labels.append(label)
        return labels

    def __call__(self, source: str, output: str, units: Optional[list[str]] = None) -> float:
        from synpro_megatron.rewards.faithfulness import split_sentences

        units = units or split_sentences(output) or [output]
        labels = self.judge_units([(source, u) for u in units])
        return sum(lab == "Faithful" for lab in labels) / max(1, len(labels))


class LLMQualityScorer:
    """Callable scorer(texts) -> scores in [0, 1] (QualityConfig.classifier)."""

    def __init__(self, backend, max_chars: int = 6000, max_new_tokens: int = 12, batch_size: int = 32):
        self.backend = backend
        self.max_chars = max_chars
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.last_unparsed: list[str] = []

    def messages(self, text: str) -> list[dict]:
        if len(text) > self.max_chars:  # head and tail, as DataMan cuts long texts
            half = self.max_chars // 2
            text = text[:half] + "\n...\n" + text[-half:]
        return [{"role": "system", "content": QUALITY_SYSTEM},
                {"role": "user", "content": QUALITY_TEMPLATE.format(text=text.strip())}]

    def __call__(self, texts: Sequence[str]) -> list[float]:
        scores: list[float] = []
        self.last_unparsed = []
        for b in range(0, len(texts), self.batch_size):
            chunk = list(texts[b:b + self.batch_size])
            answers = self.backend.generate([self.messages(t) for t in chunk], n=1, temperature=0.0, top_p=1.0,
                                            max_new_tokens=self.max_new_tokens, seed=0)
            for (answer,) in answers:
                value = parse_overall_score(answer)
                if value is None:
                    self.last_unparsed.append(answer)
                scores.append(0.0 if value is None else (value - 1) / 4)
        return scores


def judge_from_spec(model: Optional[str], backend: str = "auto") -> Optional[LLMJudge]:
    """The judge a config names (a model path), or None."""
    return LLMJudge(build_backend(model, backend)) if model else None


def quality_scorer_from_spec(model: Optional[str], backend: str = "auto") -> Optional[LLMQualityScorer]:
    return LLMQualityScorer(build_backend(model, backend)) if model else None


__all__ = ["LABELS", "LLMJudge", "LLMQualityScorer", "build_backend", "judge_from_spec", "parse_label",
           "parse_overall_score", "quality_scorer_from_spec"]
