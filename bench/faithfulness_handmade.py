"""A hand-made held-out set for bench/faithfulness.py: real web paragraphs from the packaged sample,
a faithful rewrite of each written by hand, and single edits of that rewrite, one error kind each.

The documents are ones the verifier never trains on (held out by id hash, or past the recipe's
`max_docs` training documents). Written once for issue 13 and not tuned against afterwards.
Each case: (case name, doc id, error kind or "faithful", kind of output, old text, new text); the
rewrite is FAITHFUL[doc id] with old replaced by new.
"""

FAITHFUL = {
    # dclm-00451: a news item with amounts after "Rs."
    "dclm-00451": (
        "Rajasthan has banned the production, sale and storage of gutka, a tobacco-laced paan masala, becoming the "
        "fifth state in the country to do so, and Chief Minister Ashok Gehlot warned of strong action to enforce the "
        "ban. He said violators will be fined between Rs.25,000 and Rs.10 lakh. The decision was taken at a cabinet "
        "meeting headed by Gehlot. Rajasthan is now the fifth state in the country to ban it, after Madhya Pradesh, "
        "Bihar, Maharashtra and Himachal Pradesh.\n"
        "He admitted, however, that the ban will not solve the problem completely and that it needs the cooperation "
        "of the public. Gehlot said the decision is expected to cost the state exchequer a revenue loss of around "
        "Rs.125 crore."),
    # fineweb-00183: tennis, who beat whom
    "fineweb-00183": (
        "This is one of the few weekends every year when I get up in the middle of the night to watch sports, which I "
        "have done every year since the Australian Open organizers moved the men's and women's finals to the night "
        "session.\n"
        "On Saturday morning (TSN, 1:30 a.m.), world number one Victoria Azarenka of Belarus plays Li Na of China, the "
        "2011 French Open champion and world number six. Azarenka, who is also the defending champion, defeated "
        "American sensation Sloane Stephens 6-1, 6-4 in a controversial semi-final, while Na beat Maria Sharapova 6-2, "
        "6-2. First, ESPN has spent the last two weeks projecting a Serena Williams/Maria Sharapova semi-final. "
        "Second, the crowd will probably support Na after Azarenka took a questionably lengthy timeout in her win over "
        "Stephens on Thursday.\n"
        "In the men's final on Sunday at 1:30 a.m., world number one Novak Djokovic of Serbia takes on world number "
        "three Andy Murray of Great Britain. Djokovic is without question the fresher of the two. He steamrolled past "
        "David Ferrer of Spain 6-2, 6-2, 6-1 on Thursday, while Murray needed four and a half hours and five grueling "
        "sets to beat Roger Federer, with a day less of rest."),
    # c4b-00202: a results release with parallel figures
    "c4b-00202": (
        "Teck Resources Limited (TSX: TCK.A and TCK.B, NYSE: TCK) reported a record annual profit attributable to "
        "shareholders of $2.7 billion, or $4.52 per share, 47% more than the $1.8 billion of 2010. Fourth quarter "
        "profit attributable to shareholders was $637 million, or $1.08 per share, almost twice the $325 million, or "
        "$0.55 per share, of the fourth quarter of 2010.\n"
        "Annual revenues reached a record $11.5 billion, 25% more than in 2010.\n"
        "Cash flow from operations, before working capital changes, reached a record $4.6 billion, 37% more than in "
        "2010.\n"
        "Copper production was a record 321,000 tonnes for the year, up from 313,000 tonnes in 2010."),
    # c4b-00044: a broadcaster's revenue, with a weekday
    "c4b-00044": (
        "Prasar Bharti earned only Rs 58.19 crore (Rs 581.9 million) in revenue during the Commonwealth Games last "
        "month, below expectations. Minister of State for Information and Broadcasting S Jagathrakshakan told the "
        "Lok Sabha on Tuesday that the gross revenue PB earned from advertisements on the Doordarshan channel and All "
        "India Radio during its coverage of the Games was Rs 58.17 crore.\n"
        "He said AIR earned Rs 2.18 crore (Rs 21.8 million) and Doordarshan Rs 55.99 crore (Rs 559.9 million)."),
    # c4a-00079 (held out): bank branches
    "c4a-00079": (
        "U.S. bank branches peaked at 99,550 locations in 2009, and their number has fallen every year since. The "
        "latest FDIC figure, 93,283, is a 6.3 percent decline over the last six years. Bryan Yurcan of American "
        "Banker was quick to point out, though, that \"most of that reduction has come with the nation's largest "
        "banks shedding inventory ... many smaller banks have held steady, and even increased, branch numbers.\""),
    # c4a-00350 (held out): degree requirements
    "c4a-00350": (
        "Students earn a Diploma in English Language by satisfactorily completing 60 credit hours of course work from "
        "the courses described in the Program of Study, with an overall minimum average of 65%. A BA in English "
        "Language requires 120 credit hours of course work from the courses described in the Program of Study, an "
        "overall minimum average of 65%, and a cumulative average of 70% in the major courses."),
}

# reformat entries over a correct content; the wrong-topic case swaps one topic
REFORMAT = {
    "c4b-00202": (
        "Topic: Teck's record annual profit\n"
        "Content: Teck Resources reported a record annual profit attributable to shareholders of $2.7 billion, or "
        "$4.52 per share, up 47% from $1.8 billion in 2010.\n\n"
        "Topic: Copper production\n"
        "Content: Copper production was a record 321,000 tonnes for the year, up from 313,000 tonnes in 2010."),
}

CASES = [
    # faithful rewrites, by hand
    *[(f"faithful {d}", d, "faithful", "rephrase", "", "") for d in FAITHFUL],
    ("faithful reformat", "c4b-00202", "faithful", "reformat", "", ""),
    # numbers
    ("swapped figures", "c4b-00202", "number_swap", "rephrase", "or $4.52 per share, 47%", "or $1.08 per share, 47%"),
    ("swapped amounts", "c4a-00350", "number_swap", "rephrase",
     "completing 60 credit hours", "completing 120 credit hours"),
    ("magnitude word", "c4b-00202", "magnitude", "rephrase", "record $11.5 billion", "record $11.5 million"),
    ("magnitude word (crore/lakh)", "dclm-00451", "magnitude", "rephrase", "and Rs.10 lakh", "and Rs.10 crore"),
    ("edited digits found elsewhere", "c4b-00202", "digits_elsewhere", "rephrase", "47% more than", "37% more than"),
    ("edited digits found elsewhere (unit)", "c4a-00350", "digits_elsewhere", "rephrase",
     "cumulative average of 70%", "cumulative average of 60%"),
    ("amount after Rs.", "dclm-00451", "currency", "rephrase", "around Rs.125 crore", "around Rs.175 crore"),
    ("amount after Rs (spaced)", "c4b-00044", "currency", "rephrase", "AIR earned Rs 2.18 crore", "AIR earned Rs 2.81 crore"),
    ("currency changed", "c4b-00044", "currency", "rephrase", "Rs 58.17 crore", "$58.17 crore"),
    ("weekday changed", "c4b-00044", "date", "rephrase", "Lok Sabha on Tuesday", "Lok Sabha on Thursday"),
    ("year changed", "c4a-00079", "date", "rephrase", "99,550 locations in 2009", "99,550 locations in 2006"),
    ("unit changed", "c4b-00202", "unit", "rephrase", "321,000 tonnes for the year", "321,000 ounces for the year"),
    ("unit changed (%)", "c4a-00079", "unit", "rephrase", "6.3 percent decline", "6.3 point decline"),
    ("reversed relation", "fineweb-00183", "relation", "rephrase",
     "Azarenka, who is also the defending champion, defeated American sensation Sloane Stephens",
     "American sensation Sloane Stephens defeated Azarenka, who is also the defending champion,"),
    ("reversed relation (beat)", "fineweb-00183", "relation", "rephrase", "while Na beat Maria Sharapova",
     "while Maria Sharapova beat Na"),
    ("entity from the same source", "fineweb-00183", "entity_same_doc", "rephrase", "while Na beat Maria Sharapova",
     "while Na beat Serena Williams"),
    ("entity from the same source (org)", "c4a-00079", "entity_same_doc", "rephrase", "Bryan Yurcan of American Banker",
     "Bryan Yurcan of the FDIC"),
    ("invented on-topic claim", "c4b-00202", "invented_claim", "rephrase",
     "Annual revenues reached", "Analysts had expected an even larger dividend increase from the miner. Annual revenues reached"),
    ("invented appositive", "fineweb-00183", "invented_appositive", "rephrase", "Li Na of China, the",
     "Li Na of China, who trains in Germany under a Danish coach, the"),
    ("quantifier most -> all", "c4a-00079", "quantifier", "rephrase", "\"most of that reduction", "\"all of that reduction"),
    ("quantifier few -> many", "fineweb-00183", "quantifier", "rephrase", "one of the few weekends", "one of the many weekends"),
    ("negation dropped", "dclm-00451", "negation", "rephrase", "the ban will not solve", "the ban will solve"),
    ("negation added", "c4a-00079", "negation", "rephrase", "their number has fallen every year", "their number has not fallen every year"),
    ("number word", "fineweb-00183", "number_word", "rephrase", "world number six", "world number seven"),
    ("number word (hours)", "fineweb-00183", "number_word", "rephrase", "four and a half hours", "two and a half hours"),
    ("wrong topic over correct content", "c4b-00202", "wrong_topic", "reformat", "Topic: Copper production",
     "Topic: Fourth quarter profit per share"),
]


# the lines of each document the rewrite covers (a rewrite of a whole long page would be long to write)
SOURCE_LINES = {"dclm-00451": None, "fineweb-00183": (0, 1, 2), "c4b-00202": (0, 2, 5, 6), "c4b-00044": (0, 1, 2),
                "c4a-00079": "The branch network, which peaked", "c4a-00350": "To graduate with a Diploma"}


def source_excerpt(doc_id: str, text: str) -> str:
    lines = text.split("\n")
    spec = SOURCE_LINES[doc_id]
    if spec is None:
        return text
    if isinstance(spec, str):
        return next(line for line in lines if line.startswith(spec))
    return "\n".join(lines[i] for i in spec)


def handmade_pairs(sources: dict) -> list[dict]:
    """The cases as pairs {name, source, output, kind, error}; `sources` maps doc id -> document text."""
    sources = {d: source_excerpt(d, sources[d]) for d in FAITHFUL}
    pairs = []
    for name, doc_id, error, kind, old, new in CASES:
        base = REFORMAT[doc_id] if kind == "reformat" else FAITHFUL[doc_id]
        if old and old not in base:
            raise ValueError(f"hand-made case {name!r}: {old!r} is not in the faithful rewrite of {doc_id}")
        pairs.append({"name": name, "doc_id": doc_id, "source": sources[doc_id], "output": base.replace(old, new) if old else base,
                      "kind": kind, "error": error})
    return pairs
