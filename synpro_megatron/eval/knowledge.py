"""A knowledge corpus with a known answer: fictional people, their biographies, and probes.

The "single format" setting of Allen-Zhu & Li, *Physics of Language Models, Part 3.1*: every
person gets ONE biography in ONE fixed style (name in the first sentence, pronouns after it, the
attributes always in the same order). A model that repeats such text memorises it, but the facts
do not transfer to other phrasings; several styles per person with permuted sentence order (the
"oracle" augmentation here) make them transfer. The people are fictional, so a generator that
rephrases the biographies cannot add knowledge it had before: any gain comes from presentation.

Everything is a pure function of (seed, sizes), so the corpus, the probes and the split into
held-out / reference / evaluation people are the same on every run.

Files written by `write_benchmark(out_dir, ...)`:
  bios.jsonl            {id, text}: one biography per person (the organic training corpus)
  oracle.jsonl          {id, text}: the template-augmented oracle (styles x permutations)
  eval_mc.jsonl         multiple-choice items of the evaluation people (reference_qa.jsonl format,
                        one task per attribute: `synpro eval --reference` and eval/multiple_choice.py
                        read it as they read the packaged set)
  reference.jsonl       {id, text}: the reference people's items, answered (the influence reward's
                        target and the pretraining reference loss)
  heldout_rephrasings.jsonl {id, text}: the evaluation people's facts in an unseen style (loss only)
  people.json           the people, their attributes, and which slice each belongs to

Phrasings: the biography style, the oracle styles, the probe templates and the held-out style are
disjoint sets of sentence frames; `frame_fragments` gives the literal pieces of each probe frame so
tests (and the bench, on generated text) can check that none of them occurs in training text.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Sequence
from synpro_megatron.fsutil import atomic_write_jsonl, atomic_write_text

ATTRIBUTES = ("birth_date", "birth_city", "university", "field", "employer", "employer_city")

_FIRST = ("Anya", "Boris", "Celia", "Dorian", "Elsa", "Fabian", "Greta", "Hugo", "Ilse", "Jonas", "Kira", "Lucian",
          "Mira", "Nils", "Odette", "Pavel", "Quinn", "Rosa", "Silas", "Tamsin", "Ulric", "Vera", "Wendel", "Xenia",
          "Yorick", "Zelda", "Alric", "Brenna", "Cyril", "Delphine", "Emeric", "Fenna", "Gideon", "Hester")
_MIDDLE = ("Ash", "Brook", "Cove", "Dale", "Elm", "Fern", "Glen", "Heath", "Ivy", "Jade", "Lark", "Moss", "Reed",
           "Sage", "Thorn", "Wren")
_LAST = ("Varnholt", "Quillfeather", "Brassmoor", "Oakenshaw", "Pellingham", "Torvik", "Drummelow", "Fairwick",
         "Haskerly", "Ivington", "Jostrand", "Kellaway", "Lindqvist", "Marrowby", "Norcott", "Ormsby", "Pruett",
         "Rothwell", "Sandquist", "Tillbrook", "Umberley", "Vexley", "Whitlock", "Yarborough")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_CITIES = ("Lisbon", "Oslo", "Kraków", "Valencia", "Tallinn", "Porto", "Ghent", "Bergen", "Turin", "Lyon",
           "Seville", "Utrecht", "Gdańsk", "Malmö", "Zagreb", "Bologna", "Tampere", "Graz", "Leipzig", "Aarhus",
           "Bilbao", "Riga", "Antwerp", "Salzburg")
_UNIVERSITIES = ("Halvard University", "the University of Corbridge", "Merrow Institute of Technology",
                 "Saint Alwyn College", "the Polytechnic of Dunmore", "Kestrel State University",
                 "the University of Ravensholm", "Ellery College", "Northgate Technical University",
                 "the Academy of Wyndale", "Brightwater University", "the University of Ashcombe")
_FIELDS = ("marine biology", "medieval history", "applied mathematics", "civil engineering", "linguistics",
           "organic chemistry", "astrophysics", "economics", "architecture", "neuroscience", "philosophy",
           "materials science", "musicology", "geology", "statistics", "anthropology")
# an employer has one city: the employer's city is a fact about the employer, as in Allen-Zhu & Li
_EMPLOYERS = (("Corvane Systems", "Hamburg"), ("Pellucid Labs", "Dublin"), ("Northwind Analytics", "Helsinki"),
              ("Brightforge Industries", "Rotterdam"), ("Quillon Pharmaceuticals", "Basel"),
              ("Ashgrove Capital", "Edinburgh"), ("Tidewell Energy", "Stavanger"), ("Verdant Motors", "Stuttgart"),
              ("Lumora Media", "Copenhagen"), ("Halcyon Aerospace", "Toulouse"), ("Irongate Logistics", "Antwerp"),
              ("Solenne Foods", "Milan"), ("Granite Peak Software", "Vienna"), ("Mistral Biotech", "Marseille"),
              ("Obsidian Robotics", "Eindhoven"), ("Ferngully Publishing", "Prague"))


@dataclass(frozen=True)
class Person:
    id: str
    name: str
    pronoun: str  # "he" | "she"
    birth_date: str
    birth_city: str
    university: str
    field: str
    employer: str
    employer_city: str

    def value(self, attribute: str) -> str:
        return getattr(self, attribute)


def _possessive(p: Person) -> str:
    return "his" if p.pronoun == "he" else "her"


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


# ---- phrasings ------------------------------------------------------------------------------------
# Training: the ONE biography style (pronouns after the first sentence, fixed order).
BIO_STYLE = {
    "birth_date": "{name} was born on {birth_date}.",
    "birth_city": "{Pron} spent {poss} early years in {birth_city}.",
    "university": "{Pron} received mentorship and guidance from faculty members at {university}.",
    "field": "{Pron} completed {poss} education with a focus on {field}.",
    "employer": "{Pron} had a professional role at {employer}.",
    "employer_city": "{Pron} was employed in {employer_city}.",
}
# The oracle's extra styles (full name in every sentence, so each fact is tied to the name).
ORACLE_STYLES = (
    {"birth_date": "{name} came into this world on {birth_date}.",
     "birth_city": "{name} grew up in the city of {birth_city}.",
     "university": "{name} was a student at {university}.",
     "field": "{name} specialised in {field}.",
     "employer": "{name} worked for {employer}.",
     "employer_city": "{name} was based in {employer_city} for work."},
    {"birth_date": "The birth of {name} took place on {birth_date}.",
     "birth_city": "{birth_city} is where {name} was raised.",
     "university": "{name} earned a degree from {university}.",
     "field": "The studies of {name} centred on {field}.",
     "employer": "{employer} employed {name}.",
     "employer_city": "The workplace of {name} was located in {employer_city}."},
    {"birth_date": "{name} celebrates a birthday on {birth_date}.",
     "birth_city": "{name} is a native of {birth_city}.",
     "university": "{university} is the alma mater of {name}.",
     "field": "{name} majored in {field}.",
     "employer": "{name} held a job with {employer}.",
     "employer_city": "{name} lived and worked in {employer_city}."},
)
# Probes: cloze frames ending right before the answer. Never used in any training text.
PROBE_FRAMES = {
    "birth_date": ("According to the civil registry, the day {name} was delivered was",
                   "Ask anyone close to {name} and they will name the birthday as"),
    "birth_city": ("The hometown listed on the passport of {name} reads",
                   "Childhood memories of {name} all trace back to"),
    "university": ("The diploma hanging in the office of {name} was issued by",
                   "Former classmates of {name} remember lectures at"),
    "field": ("Asked about an academic background, {name} names the discipline of",
              "The thesis written by {name} belongs to the subject of"),
    "employer": ("The badge that {name} wears each morning carries the logo of",
                 "Payslips received by {name} come from"),
    "employer_city": ("The daily commute of {name} ends in",
                      "The office desk assigned to {name} sits in"),
}
# Held-out rephrasings (loss only): one more unseen style.
HELDOUT_FRAMES = {
    "birth_date": "Documents kept on file state that {name} entered life on {birth_date}.",
    "birth_city": "Neighbours from the early days of {name} lived in {birth_city}.",
    "university": "Graduation photos of {name} show the campus of {university}.",
    "field": "Coursework done by {name} revolved around {field}.",
    "employer": "Colleagues of {name} draw paychecks from {employer}.",
    "employer_city": "Each workday finds {name} in {employer_city}.",
}


def frame_fragments(frame: str, min_words: int = 3) -> List[str]:
    """The literal pieces of a frame between its {placeholders}, those of >= min_words words
    (shorter pieces such as "of" occur in any text)."""
    pieces = [" ".join(p.split()) for p in re.split(r"\{[a-z_A-Z]+\}", frame)]
    return [p.strip(" ,.") for p in pieces if len(p.split()) >= min_words]


def probe_fragments() -> List[str]:
    frames = [f for pair in PROBE_FRAMES.values() for f in pair] + list(HELDOUT_FRAMES.values())
    return sorted({frag for f in frames for frag in frame_fragments(f)})


def _fill(frame: str, p: Person, **extra) -> str:
    values = {a: p.value(a) for a in ATTRIBUTES}
    values.update(extra)
    return frame.format(name=p.name, Pron=_cap(p.pronoun), poss=_possessive(p), **values)


# ---- people -----------------------------------------------------------------------------------------
def make_people(n: int, seed: int) -> List[Person]:
    """n fictional people with distinct names; attributes drawn uniformly from the pools."""
    rng = random.Random(f"knowledge-people:{seed}")
    max_names = len(_FIRST) * len(_MIDDLE) * len(_LAST)
    if not 1 <= n <= max_names // 4:
        raise ValueError(f"number of people must be in 1..{max_names // 4}, got {n}")
    names, people = set(), []
    while len(people) < n:
        name = f"{rng.choice(_FIRST)} {rng.choice(_MIDDLE)} {rng.choice(_LAST)}"
        if name in names:
            continue
        names.add(name)
        employer, employer_city = rng.choice(_EMPLOYERS)
        date = f"{rng.choice(_MONTHS)} {rng.randint(1, 28)}, {rng.randint(1950, 2001)}"
        people.append(Person(id=f"person-{len(people):04d}", name=name, pronoun=rng.choice(("he", "she")),
                             birth_date=date, birth_city=rng.choice(_CITIES), university=rng.choice(_UNIVERSITIES),
                             field=rng.choice(_FIELDS), employer=employer, employer_city=employer_city))
    return people


def biography(p: Person) -> str:
    """The single fixed style: attributes in order, the name only in the first sentence."""
    return " ".join(_fill(BIO_STYLE[a], p) for a in ATTRIBUTES)


def oracle_documents(p: Person, seed: int, permutations: int = 2) -> List[str]:
    """The template-augmented oracle: every oracle style, each in `permutations` random sentence
    orders (the bioS multi+permute+fullname augmentation of Allen-Zhu & Li)."""
    rng = random.Random(f"knowledge-oracle:{seed}:{p.id}")
    docs = []
    for style in ORACLE_STYLES:
        for _ in range(permutations):
            order = list(ATTRIBUTES)
            rng.shuffle(order)
            docs.append(" ".join(_fill(style[a], p) for a in order))
    return docs


def _distractors(p: Person, attribute: str, people: Sequence[Person], k: int, rng: random.Random) -> List[str]:
    pool = sorted({q.value(attribute) for q in people} - {p.value(attribute)})
    if len(pool) < k:
        raise ValueError(f"attribute {attribute!r}: only {len(pool)} distinct wrong values for {k} distractors")
    return rng.sample(pool, k)


def mc_items(p: Person, people: Sequence[Person], seed: int, num_choices: int = 4) -> List[dict]:
    """One item per attribute and probe frame, in the reference_qa.jsonl record format."""
    rng = random.Random(f"knowledge-mc:{seed}:{p.id}")
    items = []
    for attribute in ATTRIBUTES:
        for j, frame in enumerate(PROBE_FRAMES[attribute]):
            choices = _distractors(p, attribute, people, num_choices - 1, rng) + [p.value(attribute)]
            rng.shuffle(choices)
            prompt = _fill(frame, p)
            answer = p.value(attribute)
            items.append({"id": f"{p.id}:{attribute}:{j}", "task": f"knowledge_{attribute}", "prompt": prompt,
                          "answer": answer, "text": f"{prompt} {answer}", "choices": choices,
                          "gold": choices.index(answer)})
    return items


def heldout_rephrasing(p: Person) -> str:
    order = list(ATTRIBUTES)
    random.Random(f"knowledge-heldout:{p.id}").shuffle(order)
    return " ".join(_fill(HELDOUT_FRAMES[a], p) for a in order)


# ---- the split -------------------------------------------------------------------------------------
@dataclass
class KnowledgeSplit:
    """Which people each role uses. `heldout` people are the ones `synpro prepare --held-out`
    keeps out of training (their biographies give the held-out loss of the pretraining run), so
    they are neither reference nor evaluation people."""

    heldout: List[str] = field(default_factory=list)
    reference: List[str] = field(default_factory=list)
    evaluation: List[str] = field(default_factory=list)


def split_people(people: Sequence[Person], reference_fraction: float, held_out: float, prepare_seed: int) -> KnowledgeSplit:
    from synpro_megatron.data.prepare import is_held_out

    split = KnowledgeSplit()
    trained = []
    for p in people:
        (split.heldout if is_held_out(p.id, held_out, prepare_seed) else trained).append(p.id)
    n_ref = max(1, round(reference_fraction * len(trained)))
    if n_ref >= len(trained):
        raise ValueError(f"{len(trained)} trained people leave none for evaluation with reference_fraction="
                         f"{reference_fraction}")
    split.reference, split.evaluation = trained[:n_ref], trained[n_ref:]
    return split


@dataclass
class KnowledgeConfig:
    people: int = 64
    seed: int = 0
    reference_fraction: float = 0.25  # of the trained people: the reference set's slice
    held_out: float = 0.1  # fraction of people whose biographies `synpro prepare` holds out
    prepare_seed: int = 1234  # the seed `synpro prepare` splits held-out documents with
    oracle_permutations: int = 2
    num_choices: int = 4


def _write_jsonl(path: str, records: Sequence[dict]) -> None:
    atomic_write_jsonl(path, records, sort_keys=False)


def write_benchmark(out_dir: str, cfg: KnowledgeConfig) -> Dict[str, str]:
    """Write every file of the benchmark for `cfg` into out_dir; returns {name: path}."""
    os.makedirs(out_dir, exist_ok=True)
    people = make_people(cfg.people, cfg.seed)
    split = split_people(people, cfg.reference_fraction, cfg.held_out, cfg.prepare_seed)
    by_id = {p.id: p for p in people}
    trained = [by_id[i] for i in split.reference + split.evaluation]
    paths = {name: os.path.join(out_dir, name) for name in (
        "bios.jsonl", "oracle.jsonl", "eval_mc.jsonl", "reference.jsonl", "heldout_rephrasings.jsonl")}
    _write_jsonl(paths["bios.jsonl"], [{"id": p.id, "text": biography(p)} for p in people])
    # the oracle only augments people whose biography is trained on (the held-out ones stay unseen)
    _write_jsonl(paths["oracle.jsonl"], [{"id": f"{p.id}:oracle-{j}", "text": t} for p in trained
                                         for j, t in enumerate(oracle_documents(p, cfg.seed, cfg.oracle_permutations))])
    _write_jsonl(paths["eval_mc.jsonl"], [it for i in split.evaluation
                                          for it in mc_items(by_id[i], people, cfg.seed, cfg.num_choices)])
    _write_jsonl(paths["reference.jsonl"], [{"id": it["id"], "text": it["text"]} for i in split.reference
                                            for it in mc_items(by_id[i], people, cfg.seed, cfg.num_choices)])
    _write_jsonl(paths["heldout_rephrasings.jsonl"], [{"id": i, "text": heldout_rephrasing(by_id[i])}
                                                      for i in split.evaluation])
    people_path = os.path.join(out_dir, "people.json")
    atomic_write_text(people_path, json.dumps(
        {"config": asdict(cfg), "split": asdict(split), "people": [asdict(p) for p in people]}, indent=1))
    paths["people.json"] = people_path
    return paths


def corpus_digest(paths: Dict[str, str]) -> str:
    """sha256 over the written files (for the determinism test and the bench's resume check)."""
    h = hashlib.sha256()
    for name in sorted(paths):
        with open(paths[name], "rb") as f:
            h.update(name.encode() + b"\0" + f.read())
    return h.hexdigest()


def contaminated_fragments(texts: Sequence[str]) -> Dict[str, int]:
    """Probe fragments that occur in `texts` (case-insensitive), with counts: empty means clean."""
    frags = probe_fragments()
    found: Dict[str, int] = {}
    for t in texts:
        low = " ".join(t.split()).lower()
        for frag in frags:
            if frag.lower() in low:
                found[frag] = found.get(frag, 0) + 1
    return found


def heldout_loss(checkpoint: str, texts: Sequence[str], batch_size: int = 16) -> float:
    """Mean per-token negative log-likelihood of `texts` (each scored on its own, after EOD)."""
    from synpro_megatron.pretrain.inference import load_for_inference, sequence_logprobs

    loaded = load_for_inference(checkpoint)
    tok = loaded.tokenizer
    max_len = loaded.config.model_config().seq_length
    total, count = 0.0, 0
    ids = [t[:max_len - 1] for t in tok.tokenize_batch(list(texts))]
    for lo in range(0, len(ids), batch_size):
        conts = ids[lo:lo + batch_size]
        got = sequence_logprobs(loaded.model, [[tok.eod]] * len(conts), conts, pad_id=tok.eod, max_len=max_len)
        total -= sum(float(v) for v in got)
        count += sum(len(c) for c in conts)
    return total / max(1, count)
