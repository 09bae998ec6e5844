"""Prompt templates for the two generators, and parsers for what they write back.

rephrase: rewrite a web document as clean prose. Boilerplate goes, every fact and the document's
structure stay, nothing is added. The answer opens with a fixed lead line (REPHRASE_LEAD) so the
format reward and the parser can find where the rewrite starts.

reformat: turn a document into at most MAX_ENTRIES entries, each one of ENTRY_KINDS, written as

    Topic (kind): a short title
    Content: one to three sentences taken from the document

under a fixed heading (REFORMAT_HEADING). The kind tag is optional for the parser (a small model
often drops it) but the format reward pays for it.

The wording below is ours; it only follows the published method's intent.
The fixed texts and the parsers live in `synpro_megatron.formats` (shared with the rewards, which must
not import the generators); they are re-exported here so existing imports keep working.
"""
from __future__ import annotations

from typing import Optional

from synpro_megatron.formats import (  # noqa: F401  (re-exported)
    _CONTENT_RE, _LOOSE_LEAD_RE, _TOPIC_RE, DOCUMENT_MARKER, ENTRY_KINDS, EXAMPLE_ANSWERS, EXAMPLE_SOURCE, HEADING_RE,
    INSTRUCTIONS, KINDS, LEAD_RE, MAX_ENTRIES, REFORMAT_HEADING, REFORMAT_INSTRUCTIONS, REPHRASE_INSTRUCTIONS,
    REPHRASE_LEAD, SYSTEM_PROMPT, ReformatEntry, ReformatParse, _marker_pattern, check_kind, completion_text,
    count_marker, instruction_text, normalise_entry_kind, output_units, parse_output, parse_reformat,
    parse_reformat_detailed, parse_rephrase, reformat_to_text, strip_marker)

FOLLOW_UP = {
    "rephrase": f"Now the same for this document. Start with the line \"{REPHRASE_LEAD}\"",
    "reformat": f"Now the same for this document. Start with the line \"{REFORMAT_HEADING}\"",
}
# prefill=True starts the answer for the model (it continues from here): the lead line, or the
# heading and the first entry's label, so a small model cannot drift into its own format.
PREFILLS = {"rephrase": f"{REPHRASE_LEAD}\n", "reformat": f"{REFORMAT_HEADING}\nTopic (factual):"}


def _request(kind: str, source: str) -> dict:
    return {"role": "user", "content": f"{INSTRUCTIONS[kind]}\n\n{DOCUMENT_MARKER}\n{source.strip()}"}


def render_messages(kind: str, source: str, system: Optional[str] = SYSTEM_PROMPT, few_shot: bool = False,
                    prefill: bool = False) -> list[dict]:
    """Chat messages asking the generator to rewrite `source` as `kind`.

    A system message is always sent (even our own) because SmolLM2's template otherwise injects
    its default persona line. few_shot puts the worked example first; prefill ends the chat with
    the start of the answer (backends continue it and return it with the completion).
    """
    check_kind(kind)
    messages = [{"role": "system", "content": system}] if system else []
    if few_shot:
        # the instructions once, with the example; the real request then only names the task
        # (on a CPU every prompt token is paid for once per sample)
        messages += [_request(kind, EXAMPLE_SOURCE), {"role": "assistant", "content": EXAMPLE_ANSWERS[kind]},
                     {"role": "user", "content": f"{FOLLOW_UP[kind]}\n\n{DOCUMENT_MARKER}\n{source.strip()}"}]
    else:
        messages.append(_request(kind, source))
    if prefill:
        messages.append({"role": "assistant", "content": PREFILLS[kind]})
    return messages


def source_of(messages: list[dict]) -> str:
    """The document a prompt from render_messages asks about (its last user turn)."""
    user = [m for m in messages if m.get("role") == "user"][-1]["content"]
    return user.split(f"{DOCUMENT_MARKER}\n", 1)[1]
