"""The fixed texts of the two generator formats and the parsers for what a generator writes back.

Neutral ground between `generators` (which prompts with these texts) and `rewards` (which parses and
checks the answers): neither imports the other. `generators.prompts` re-exports every name here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

KINDS = ("rephrase", "reformat")
REPHRASE_LEAD = "Here is a paraphrased version:"
REFORMAT_HEADING = "Here are the entries drawn from the text:"
ENTRY_KINDS = ("factual", "analytical", "conceptual", "comparative", "problem-solving")
MAX_ENTRIES = 8

SYSTEM_PROMPT = (
    "You are a careful editor. You rewrite documents for a library of clean reading material. "
    "You never invent facts, names or numbers, and you follow the requested output format exactly."
)

REPHRASE_INSTRUCTIONS = f"""Rewrite the document below in clear, well-formed prose.
- Remove material that is not part of the content: menus, navigation, cookie or login notices, ads, share buttons, footers and decorative lines.
- Keep every fact, name, number, example and argument that belongs to the content, in the same order and with the same structure (paragraphs, lists, steps).
- If a sentence mixes content and clutter, drop only the clutter.
- Do not add anything: no comments, explanations, opinions, summaries or new facts.
Start your answer with the line "{REPHRASE_LEAD}" and then give the rewritten document."""

REFORMAT_INSTRUCTIONS = f"""Turn the document below into at most {MAX_ENTRIES} short study entries that capture its key information.
Each entry is one of these kinds:
- factual: a fact stated in the document;
- analytical: a cause, effect or relationship the document explains;
- conceptual: what a term or idea used in the document means;
- comparative: how two things in the document are alike or differ;
- problem-solving: a procedure, calculation or line of reasoning from the document.
Write each entry as two lines:
Topic (kind): a short title
Content: one to three plain sentences
Use only information from the document, plain text without markdown, and leave a blank line between entries.
Start your answer with the line "{REFORMAT_HEADING}"."""

INSTRUCTIONS = {"rephrase": REPHRASE_INSTRUCTIONS, "reformat": REFORMAT_INSTRUCTIONS}
DOCUMENT_MARKER = "Document:"

# A worked example, shown as an earlier turn of the chat (few_shot=True). A 135M generator copies
# the form of an example far more reliably than it follows written rules; a 1B one does not need
# it. The example is invented and belongs to no corpus; copying it counts as prompt echo and fails
# the entity check.
EXAMPLE_SOURCE = """Home » News » Community
Posted by admin | 3 comments
The Millbrook community garden will open its new greenhouse on Saturday, May 4. Volunteers built the greenhouse over six weeks with wood donated by a local sawmill. It holds 40 raised beds, and residents can rent a bed for $15 a season.
Click here to subscribe to our newsletter!
To reserve a bed, email the garden committee before April 20. Beds are assigned in the order requests arrive.
Share this: Facebook Twitter"""
EXAMPLE_ANSWERS = {
    "rephrase": f"""{REPHRASE_LEAD}
On Saturday, May 4, the Millbrook community garden opens its new greenhouse. Over six weeks, volunteers built it from wood that a local sawmill donated. The greenhouse has 40 raised beds, which residents may rent for $15 per season.
Anyone who wants a bed should email the garden committee before April 20. Beds go to requests in the order they arrive.""",
    "reformat": f"""{REFORMAT_HEADING}
Topic (factual): The Millbrook greenhouse opening
Content: The Millbrook community garden opens its new greenhouse on Saturday, May 4. It holds 40 raised beds.

Topic (analytical): How the greenhouse was built
Content: Volunteers built the greenhouse over six weeks with wood donated by a local sawmill.

Topic (problem-solving): Reserving a bed
Content: Residents email the garden committee before April 20 and pay $15 a season. Beds are assigned in the order requests arrive.""",
}
# The example's own names and things. The 135M generator copies them into answers about other
# documents: in the demo, 7 of 9 reformat answers were the example's entries ("The Millbrook
# greenhouse opening") over texts about other things. With the example shown, synthesis forbids the
# generator each of these words that its document does not contain (the backends' `banned_words`).
EXAMPLE_WORDS = ("Millbrook", "greenhouse", "sawmill", "garden", "raised beds", "beds", "Reserving",
                 "volunteers", "committee", "newsletter")


def example_words_absent_from(source: str) -> list[str]:
    """EXAMPLE_WORDS the source does not contain (as any part of a word: "gardening" keeps "garden"
    allowed), each as written, lower-case and capitalised."""
    low = source.lower()
    banned: list[str] = []
    for word in EXAMPLE_WORDS:
        if word.lower() not in low:
            banned += [word, word.lower(), word[0].upper() + word[1:]]
    return list(dict.fromkeys(banned))


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown generator kind {kind!r}; choose one of {KINDS}")
    return kind


def instruction_text(kind: str) -> str:
    """The fixed part of the prompt, the worked example included (what a prompt-echo check
    compares against)."""
    kind = check_kind(kind)
    return f"{SYSTEM_PROMPT}\n{INSTRUCTIONS[kind]}\n{EXAMPLE_SOURCE}\n{EXAMPLE_ANSWERS[kind]}"


def completion_text(completion) -> str:
    """A TRL completion (a string, or a list of chat messages) as plain text."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    raise TypeError(f"completion of type {type(completion).__name__} is neither text nor chat messages")


# ---------------------------------------------------------------------------------------- parsing

def _marker_pattern(marker: str) -> re.Pattern:
    # Tolerate case changes and markdown decoration (**Here is ...:**) around the fixed line.
    core = re.escape(marker.rstrip(":")).replace(r"\ ", r"\s+")
    return re.compile(r"[*#_\s]*" + core + r"\s*:?[*_]*", re.IGNORECASE)


LEAD_RE = _marker_pattern(REPHRASE_LEAD)
HEADING_RE = _marker_pattern(REFORMAT_HEADING)


def count_marker(kind: str, text: str) -> int:
    return len((LEAD_RE if check_kind(kind) == "rephrase" else HEADING_RE).findall(text))


def strip_marker(kind: str, text: str) -> str:
    """Text after the first lead line / heading; the whole text when it is missing."""
    match = (LEAD_RE if check_kind(kind) == "rephrase" else HEADING_RE).search(text)
    return (text[match.end():] if match else text).strip()


# "Here is a rewritten version of the document:" and the like: a lead line in the model's own words.
# It is chatter, not content: drop it from the training text (the format reward still asks for ours).
_LOOSE_LEAD_RE = re.compile(r"^\s*(?:sure[,!.]?\s*)?(?:here is|here's|below is)\b[^\n]{0,120}:\s*\n", re.IGNORECASE)


def parse_rephrase(completion: str) -> str:
    text = completion_text(completion)
    if LEAD_RE.search(text):
        return strip_marker("rephrase", text)
    return _LOOSE_LEAD_RE.sub("", text, count=1).strip()


@dataclass(frozen=True)
class ReformatEntry:
    topic: str
    content: str
    kind: Optional[str] = None  # one of ENTRY_KINDS, or None when the model left it out

    def as_text(self) -> str:
        return f"Topic: {self.topic}\nContent: {self.content}"


# "Topic (factual): ..." / "- Topic: ..." / "1. Topic [comparative]: ..."
_TOPIC_RE = re.compile(
    r"^\s*(?:[-*•]|\d{1,2}[.)])?\s*\**topic\**\s*(?:[(\[]\s*(?P<kind>[a-z][a-z -]*?)\s*[)\]])?\s*\**:\**\s*(?P<topic>.*)$",
    re.IGNORECASE,
)
# "Content: ..." and the kind tag a small model sometimes moves there: "Content (analytical): ..."
_CONTENT_RE = re.compile(r"^\s*\**content\**\s*(?:[(\[][a-z -]*[)\]])?\s*:\**\s*(?P<content>.*)$", re.IGNORECASE)


def normalise_entry_kind(kind: Optional[str]) -> Optional[str]:
    if not kind:
        return None
    key = re.sub(r"[\s_]+", "-", kind.strip().lower())
    return key if key in ENTRY_KINDS else None


@dataclass
class ReformatParse:
    entries: list[ReformatEntry]
    stray_lines: int  # non-empty lines that belong to no entry (chatter, markdown, echo)
    raw_kinds: list[Optional[str]]  # the kind tag as written (None when absent), one per entry


def parse_reformat_detailed(completion: str) -> ReformatParse:
    body = strip_marker("reformat", completion_text(completion))
    entries, raw_kinds = [], []
    stray = 0
    topic = kind = None
    content_lines: list[str] = []
    in_content = False

    def flush():
        nonlocal topic, kind, content_lines, in_content
        content = " ".join(s.strip() for s in content_lines if s.strip())
        if topic is not None and topic.strip() and content:
            entries.append(ReformatEntry(topic.strip(), content, normalise_entry_kind(kind)))
            raw_kinds.append(kind)
        topic, kind, content_lines, in_content = None, None, [], False

    for line in body.splitlines():
        m_topic = _TOPIC_RE.match(line)
        if m_topic:
            flush()
            topic, kind = m_topic.group("topic"), m_topic.group("kind")
            # "Topic: X Content: Y" written on one line
            inline = re.split(r"\s+\**content\**\s*:\**\s*", topic, maxsplit=1, flags=re.IGNORECASE)
            if len(inline) == 2:
                topic, content_lines, in_content = inline[0], [inline[1]], True
            continue
        m_content = _CONTENT_RE.match(line)
        if m_content and topic is not None:
            content_lines, in_content = [m_content.group("content")], True
            continue
        if not line.strip():
            in_content = False  # a blank line ends an entry's content; text after it is not content
        elif in_content:
            content_lines.append(line)
        else:
            stray += 1
    flush()
    return ReformatParse(entries, stray, raw_kinds)


def parse_reformat(completion: str) -> list[ReformatEntry]:
    return parse_reformat_detailed(completion).entries


def reformat_to_text(entries: list[ReformatEntry]) -> str:
    return "\n\n".join(e.as_text() for e in entries)


def parse_output(kind: str, completion) -> str:
    """The training text a completion contributes: the rewrite without its lead line, or the
    reformat entries in canonical form (empty when no entry parses)."""
    if check_kind(kind) == "rephrase":
        return parse_rephrase(completion)
    return reformat_to_text(parse_reformat(completion))


def output_units(kind: str, completion) -> Optional[list[str]]:
    """For reformat, each Topic+Content entry is one unit for faithfulness; rephrase returns None
    (the checker splits it into sentences)."""
    if check_kind(kind) == "reformat":
        return [f"{e.topic}. {e.content}" for e in parse_reformat(completion)]
    return None
