"""Rule-based edits of a source sentence: faithful variants and unfaithful edits of each error kind.

They make the verifier's weakly supervised training pairs (verifier.py) and the held-out pairs of
bench/faithfulness.py. Every edit returns (kind, new sentence) or nothing when it does not apply.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional

from synpro_megatron.rewards.checks import _MONTHS, spacy_parser

UNFAITHFUL_KINDS = ("number", "magnitude", "number_word", "unit", "currency", "date", "entity_same_doc",
                    "entity_other_doc", "negation", "quantifier", "relation", "other_document")
_MAG_SWAP = {"million": "billion", "billion": "million", "thousand": "million", "hundred": "thousand",
             "trillion": "billion", "bn": "m", "lakh": "crore", "crore": "lakh"}
_UNIT_SWAP = {"meters": "feet", "metres": "feet", "feet": "meters", "miles": "kilometers", "kilometers": "miles",
              "km": "miles", "kg": "pounds", "pounds": "kilograms", "percent": "points", "%": " points",
              "years": "months", "months": "years", "days": "weeks", "weeks": "days", "hours": "minutes",
              "minutes": "hours", "acres": "hectares", "square feet": "square meters", "degrees": "percent",
              "inches": "feet", "tons": "pounds", "liters": "gallons", "gallons": "liters"}
_CUR_SWAP = {"$": "€", "€": "$", "£": "$", "Rs.": "$", "Rs": "$", "INR": "USD", "USD": "EUR"}
_NUM_WORDS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve", "twenty"]
_QUANT_SWAP = {"most": "all", "many": "few", "some": "all", "all": "some", "few": "many", "several": "all",
               "always": "never", "often": "rarely", "never": "always", "usually": "rarely", "every": "no",
               "sometimes": "always", "each": "no"}


@lru_cache(maxsize=8192)
def parse(text: str):
    """One spaCy parse per distinct text (edits of one sentence share it)."""
    return spacy_parser()(text)


@dataclass
class EntityPool:
    by_label: dict = field(default_factory=dict)  # label -> entity texts (from other documents)

    @classmethod
    def from_texts(cls, texts: list[str]) -> "EntityPool":
        pool: dict = {}
        for doc in spacy_parser().pipe(texts, batch_size=32):
            for e in doc.ents:
                if e.label_ in ("PERSON", "ORG", "GPE", "LOC", "NORP", "FAC", "PRODUCT", "EVENT"):
                    pool.setdefault(e.label_, set()).add(e.text)
        return cls({k: sorted(v) for k, v in pool.items()})


# ------------------------------------------------------------------------------------ faithful

def faithful_variants(sentence: str, next_sentence: Optional[str], rng: random.Random) -> list[tuple[str, str]]:
    out = [("copy", sentence)]
    parts = [p.strip() for p in re.split(r",\s+", sentence.rstrip(".!?")) if p.strip()]
    if len(parts) >= 2 and all(len(p.split()) >= 3 for p in parts[:2]):
        swapped = f"{parts[1][0].upper()}{parts[1][1:]}, {parts[0][0].lower()}{parts[0][1:]}"
        if len(parts) > 2:
            swapped += ", " + ", ".join(parts[2:])
        out.append(("reorder", swapped + "."))
        kept = max(parts, key=len)  # a clause dropped: faithful (a rewrite may leave things out)
        out.append(("drop_clause", kept[0].upper() + kept[1:] + "."))
    halves = re.split(r"\s+(?:and|but|while|;)\s+", sentence.rstrip(".!?"), maxsplit=1)
    if len(halves) == 2 and all(len(h.split()) >= 4 for h in halves):
        out.append(("split", f"{halves[0]}. {halves[1][0].upper()}{halves[1][1:]}."))
    if next_sentence and len(next_sentence.split()) <= 30 and rng.random() < 0.5:
        out.append(("merge", f"{sentence.rstrip('.!?')}, and {next_sentence[0].lower()}{next_sentence[1:]}"))
    para = paraphrase(sentence, rng)
    if para:
        out.append(("paraphrase", para))
    # boilerplate around the content stripped: the sentence with a leading "Posted by ..." removed is
    # itself; a boilerplate-prefixed copy is not an output we want, so only the stripped side is shown
    return out


# Words a paraphrase may swap for one another without changing a fact: common verbs, adjectives,
# adverbs and connectives only (no quantifier, negation, number, unit, month or name). Without
# faithful pairs that bring in new words, a verifier learns "a word the source lacks is an error"
# and rejects every real paraphrase (it rejected all 7 hand-written ones).
_SYNONYMS = {
    "big": "large", "large": "big", "small": "little", "buy": "purchase", "bought": "purchased",
    "purchase": "buy", "help": "assist", "helps": "assists", "helped": "assisted", "start": "begin",
    "started": "began", "starts": "begins", "begin": "start", "began": "started", "show": "demonstrate",
    "shows": "demonstrates", "showed": "demonstrated", "use": "employ", "uses": "employs", "used": "employed",
    "need": "require", "needs": "requires", "needed": "required", "get": "obtain", "gets": "obtains",
    "got": "obtained", "make": "create", "makes": "creates", "made": "created", "important": "significant",
    "main": "principal", "also": "additionally", "however": "but", "but": "yet", "because": "since",
    "about": "regarding", "said": "stated", "says": "states", "tell": "inform", "told": "informed",
    "think": "believe", "thinks": "believes", "thought": "believed", "quickly": "rapidly", "fast": "quick",
    "easy": "simple", "simple": "easy", "hard": "difficult", "difficult": "hard", "great": "excellent",
    "good": "fine", "beautiful": "lovely", "choose": "select", "chose": "selected", "pick": "choose",
    "find": "locate", "found": "located", "try": "attempt", "tried": "attempted", "enough": "sufficient",
    "maybe": "perhaps", "perhaps": "maybe", "near": "close to", "nearby": "close by", "around": "about",
    "enjoy": "like", "enjoyed": "liked", "love": "adore", "loves": "adores", "offer": "provide",
    "offers": "provides", "offered": "provided", "provide": "offer", "provides": "offers", "keep": "retain",
    "kept": "retained", "allow": "permit", "allows": "permits", "allowed": "permitted", "ask": "request",
    "asked": "requested", "answer": "reply", "build": "construct", "built": "constructed", "buildings": "structures",
    "car": "automobile", "cars": "automobiles", "children": "kids", "kids": "children", "job": "position",
    "jobs": "positions", "work": "labour", "home": "house", "town": "city", "region": "area", "area": "region",
    "method": "approach", "way": "manner", "idea": "notion", "problem": "issue", "problems": "issues",
    "issue": "problem", "issues": "problems", "goal": "aim", "goals": "aims", "result": "outcome",
    "results": "outcomes", "rule": "regulation", "rules": "regulations", "aim": "goal", "trip": "journey",
    "journey": "trip", "customers": "clients", "clients": "customers", "company": "firm", "firm": "company",
    "shop": "store", "store": "shop", "begins": "starts", "finish": "complete", "finished": "completed",
    "completed": "finished", "receive": "get", "received": "got", "explain": "describe", "explains": "describes",
    "explained": "described", "include": "contain", "includes": "contains", "included": "contained",
    "contains": "includes", "various": "different", "different": "distinct", "several": "a number of",
    "recently": "lately", "currently": "now", "now": "currently", "often": "frequently", "usually": "typically",
    "typically": "usually", "mostly": "mainly", "mainly": "mostly", "especially": "particularly",
    "particularly": "especially", "very": "really", "really": "truly", "therefore": "so", "thus": "so",
    "moreover": "also", "furthermore": "also", "despite": "in spite of", "although": "though",
    "though": "although", "while": "whereas", "whether": "if", "among": "amongst", "within": "inside",
}
_WORD_RE = re.compile(r"[A-Za-z]+")


def paraphrase(sentence: str, rng: random.Random, max_swaps: int = 3) -> Optional[str]:
    """The sentence with up to `max_swaps` words swapped for synonyms (_SYNONYMS), and sometimes a
    connective in front: a faithful rewrite whose new words change no fact. None when nothing applies."""
    spots = [m for m in _WORD_RE.finditer(sentence) if m.group(0).lower() in _SYNONYMS]
    if not spots:
        return None
    chosen = sorted(rng.sample(spots, min(max_swaps, len(spots))), key=lambda m: m.start(), reverse=True)
    out = sentence
    for m in chosen:
        word = m.group(0)
        new = _SYNONYMS[word.lower()]
        if word[0].isupper():
            new = new[0].upper() + new[1:]
        out = _replace_span(out, m.start(), m.end(), new)
    if rng.random() < 0.25 and out[0].isupper() and not out.startswith(("I ", "I'")):
        out = rng.choice(("In short, ", "Put simply, ", "In fact, ")) + out[0].lower() + out[1:]
    return out if out != sentence else None


# ------------------------------------------------------------------------------------ unfaithful

def _replace_span(text: str, start: int, end: int, new: str) -> str:
    return text[:start] + new + text[end:]


def edit_number(s: str, rng: random.Random, doc_text: str = "") -> Optional[tuple[str, str]]:
    nums = [m for m in re.finditer(r"(?<![\w.])\d[\d,]*(?:\.\d+)?", s)]
    if not nums:
        return None
    m = rng.choice(nums)
    raw = m.group()
    # prefer a number that occurs elsewhere in the document (the hard case), else shift a digit
    others = [x for x in re.findall(r"(?<![\w.])\d[\d,]*(?:\.\d+)?", doc_text) if x != raw and x.rstrip(",") != raw]
    if others and rng.random() < 0.5:
        new = rng.choice(others).rstrip(",")
    else:
        digits = [i for i, c in enumerate(raw) if c.isdigit()]
        i = rng.choice(digits)
        new = raw[:i] + str((int(raw[i]) + rng.randint(1, 8)) % 10) + raw[i + 1:]
        if new.lstrip("0") == "" or new == raw:
            new = raw[:i] + str((int(raw[i]) + 1) % 10 or 1) + raw[i + 1:]
    return ("number", _replace_span(s, m.start(), m.end(), new)) if new != raw else None


def edit_swap_numbers(s: str, rng: random.Random) -> Optional[tuple[str, str]]:
    nums = list(re.finditer(r"(?<![\w.])\d[\d,]*(?:\.\d+)?", s))
    distinct = [m for m in nums if m.group() != nums[0].group()]
    if len(nums) < 2 or not distinct:
        return None
    a, b = nums[0], distinct[0]
    return ("number", s[:a.start()] + b.group() + s[a.end():b.start()] + a.group() + s[b.end():])


def edit_magnitude(s: str, rng: random.Random) -> Optional[tuple[str, str]]:
    m = re.search(r"\b(" + "|".join(_MAG_SWAP) + r")\b", s)
    return ("magnitude", _replace_span(s, m.start(), m.end(), _MAG_SWAP[m.group(1)])) if m else None


def edit_number_word(s: str, rng: random.Random) -> Optional[tuple[str, str]]:
    m = re.search(r"\b(" + "|".join(_NUM_WORDS) + r")\b", s, re.IGNORECASE)
    if not m:
        return None
    choices = [w for w in _NUM_WORDS if w != m.group(1).lower()]
    new = rng.choice(choices)
    if m.group(1)[0].isupper():
        new = new.capitalize()
    return ("number_word", _replace_span(s, m.start(), m.end(), new))


def edit_unit(s: str, rng: random.Random) -> Optional[tuple[str, str]]:
    m = re.search(r"(?<=\d)\s?(" + "|".join(re.escape(u) for u in sorted(_UNIT_SWAP, key=len, reverse=True)) + r")\b", s)
    if not m:
        m = re.search(r"(?<=\d)(%)", s)
    if not m:
        return None
    new = _UNIT_SWAP[m.group(1)]
    return ("unit", s[:m.start(1)] + (new if not new.startswith(" ") or s[m.start(1) - 1] != " " else new.strip())
            + s[m.end(1):])


def edit_currency(s: str, rng: random.Random) -> Optional[tuple[str, str]]:
    m = re.search(r"(Rs\.|\$|€|£|\bINR\b|\bUSD\b)\s?(?=\d)", s)
    if not m:
        return None
    if rng.random() < 0.5:  # change the amount after the currency
        num = re.match(r"\s?(\d[\d,]*(?:\.\d+)?)", s[m.end():])
        if num:
            raw = num.group(1)
            i = max(i for i, c in enumerate(raw) if c.isdigit())
            new = raw[:i] + str((int(raw[i]) + 3) % 10) + raw[i + 1:]
            start = m.end() + num.start(1)
            return ("currency", _replace_span(s, start, start + len(raw), new))
    return ("currency", _replace_span(s, m.start(1), m.end(1), _CUR_SWAP.get(m.group(1), "$")))


def edit_date(s: str, rng: random.Random, doc_text: str = "") -> Optional[tuple[str, str]]:
    m = re.search(r"\b(" + "|".join(mo.capitalize() for mo in _MONTHS) + r")\b", s)
    if not m or (m.group(1) == "May" and not re.search(r"\bMay\s+\d|\b(?:in|of|since|until|by)\s+May\b", s)):
        return None
    in_doc = [mo.capitalize() for mo in _MONTHS if mo.capitalize() in doc_text and mo.capitalize() != m.group(1)]
    new = rng.choice(in_doc) if in_doc and rng.random() < 0.5 else rng.choice(
        [mo.capitalize() for mo in _MONTHS if mo.capitalize() != m.group(1)])
    return ("date", _replace_span(s, m.start(), m.end(), new))


def edit_entity(s: str, rng: random.Random, pool: EntityPool, doc_text: str = "") -> list[tuple[str, str]]:
    out = []
    doc = parse(s)
    ents = [e for e in doc.ents if e.label_ in ("PERSON", "ORG", "GPE", "LOC", "NORP", "FAC", "PRODUCT", "EVENT")]
    if not ents:
        return out
    e = rng.choice(ents)
    src_doc = parse(doc_text[:3000]) if doc_text else None
    same = sorted({x.text for x in src_doc.ents if x.label_ == e.label_ and x.text not in e.text and e.text not in x.text}) if src_doc else []
    if same:
        out.append(("entity_same_doc", s[:e.start_char] + rng.choice(same) + s[e.end_char:]))
    other = [x for x in pool.by_label.get(e.label_, []) if x not in doc_text and x.lower() not in doc_text.lower()]
    if other:
        out.append(("entity_other_doc", s[:e.start_char] + rng.choice(other) + s[e.end_char:]))
    return out


def edit_negation(s: str, rng: random.Random) -> Optional[tuple[str, str]]:
    m = re.search(r"\b(?:is|are|was|were|has|have|had|will|can|could|would|should|does|did|do)\s+not\s+", s)
    if m:
        return ("negation", s[:m.start()] + m.group().split()[0] + " " + s[m.end():])
    m = re.search(r"\b(?:n't)\b|\b(\w+)n't\b", s)
    if m and m.group(1):
        return ("negation", s[:m.start()] + m.group(1) + s[m.end():])
    m = re.search(r"\b(is|are|was|were|will|can|could|would|should|has|have|had)\s+(?!not\b)", s)
    if m:
        return ("negation", s[:m.end(1)] + " not" + s[m.end(1):])
    doc = parse(s)
    root = next((t for t in doc if t.dep_ == "ROOT" and t.pos_ == "VERB" and t.tag_ in ("VBD", "VBZ", "VBP")), None)
    if root is None:
        return None
    aux = {"VBD": "did not", "VBZ": "does not", "VBP": "do not"}[root.tag_]
    return ("negation", s[:root.idx] + f"{aux} {root.lemma_}" + s[root.idx + len(root.text):])


def edit_quantifier(s: str, rng: random.Random) -> Optional[tuple[str, str]]:
    m = re.search(r"\b(" + "|".join(_QUANT_SWAP) + r")\b", s, re.IGNORECASE)
    if m:
        new = _QUANT_SWAP[m.group(1).lower()]
        return ("quantifier", _replace_span(s, m.start(), m.end(), new.capitalize() if m.group(1)[0].isupper() else new))
    # no quantifier: make a plural subject universal ("Investors ..." -> "All investors ...")
    doc = parse(s)
    subj = next((t for t in doc if t.dep_ == "nsubj" and t.tag_ == "NNS"), None)
    if subj is None:
        return None
    start = min(t.idx for t in subj.subtree)
    first = s[start:]
    if first.lower().startswith("the "):
        return ("quantifier", s[:start] + ("All of " if start == 0 else "all of ") + first)
    return ("quantifier", s[:start] + ("All " if start == 0 else "all ") + first[0].lower() + first[1:])


def edit_relation(s: str, rng: random.Random) -> Optional[tuple[str, str]]:
    """Subject and object of a verb swapped along the dependency parse ("A bought B" -> "B bought A")."""
    doc = parse(s)
    for tok in doc:
        subj = next((c for c in tok.children if c.dep_ in ("nsubj", "nsubjpass")), None)
        obj = next((c for c in tok.children if c.dep_ == "dobj"), None)
        if subj is None and tok.dep_ != "ROOT":
            continue
        if obj is None:
            agent = next((g for c in tok.children if c.dep_ == "agent" for g in c.children if g.dep_ == "pobj"), None)
            obj = agent
        if subj is None or obj is None or subj.pos_ not in ("PROPN", "NOUN") or obj.pos_ not in ("PROPN", "NOUN"):
            continue
        a = doc[min(t.i for t in subj.subtree if t.dep_ not in ("relcl", "acl", "prep") or t == subj):subj.i + 1]
        b = doc[min(t.i for t in obj.subtree if t.dep_ not in ("relcl", "acl", "prep") or t == obj):obj.i + 1]
        if a.text.lower() == b.text.lower() or a.start < b.start < a.end:
            continue
        first, second = (a, b) if a.start < b.start else (b, a)
        new = (s[:first.start_char] + second.text + s[first.end_char:second.start_char] + first.text
               + s[second.end_char:])
        if new != s:
            if new[0].islower():
                new = new[0].upper() + new[1:]
            return ("relation", new)
    return None


def unfaithful_edits(sentence: str, rng: random.Random, pool: EntityPool, doc_text: str = "",
                     other_sentences: Optional[list[str]] = None) -> list[tuple[str, str]]:
    """Every edit that applies to this sentence, one per kind."""
    made = []
    for fn in (lambda: edit_number(sentence, rng, doc_text), lambda: edit_swap_numbers(sentence, rng),
               lambda: edit_magnitude(sentence, rng), lambda: edit_number_word(sentence, rng),
               lambda: edit_unit(sentence, rng), lambda: edit_currency(sentence, rng),
               lambda: edit_date(sentence, rng, doc_text), lambda: edit_negation(sentence, rng),
               lambda: edit_quantifier(sentence, rng), lambda: edit_relation(sentence, rng)):
        r = fn()
        if r and r[1] != sentence:
            made.append(r)
    made.extend(e for e in edit_entity(sentence, rng, pool, doc_text) if e[1] != sentence)
    if other_sentences:
        made.append(("other_document", rng.choice(other_sentences)))
    return made


def topics(sentence: str, other_sentences: list[str], rng: random.Random) -> tuple[Optional[str], Optional[str]]:
    """A reformat Topic drawn from the sentence's own noun chunks, and one from another sentence."""
    def title(s: str) -> Optional[str]:
        chunks = [c.text for c in parse(s).noun_chunks if len(c.text.split()) >= 2 and not c.root.is_stop]
        if not chunks:
            return None
        t = rng.choice(chunks)
        return t[0].upper() + t[1:]

    def forms(s: str) -> set:  # words without punctuation or a plural s: "Kiosk" is in 'Exit Kiosk"'
        return {re.sub(r"(?<=\w{3})s$", "", w) for w in re.findall(r"[a-z0-9]+", s.lower())}

    right = title(sentence)
    wrong = None
    if other_sentences:
        cand = title(rng.choice(other_sentences))
        # a wrong topic shares no word with the sentence: "Your sentences" over "the meaning of the
        # sentence" would be a weak topic, not a wrong one
        if cand and right and not forms(cand) & forms(sentence):
            wrong = cand
    return right, wrong
