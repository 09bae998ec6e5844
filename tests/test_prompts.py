"""Prompt rendering, output parsing and chunking (no model needed)."""
import pytest

from synpro_megatron.generators.chunking import chunk_source, join_outputs, piece_token_budget
from synpro_megatron.generators.prompts import (ENTRY_KINDS, EXAMPLE_ANSWERS, EXAMPLE_SOURCE, PREFILLS,
                                                REFORMAT_HEADING, REFORMAT_INSTRUCTIONS, REPHRASE_LEAD,
                                                ReformatEntry, count_marker, output_units, parse_output,
                                                parse_reformat, parse_reformat_detailed, parse_rephrase,
                                                reformat_to_text, render_messages, source_of)
from synpro_megatron.rewards.format import format_reward

SOURCE = "The Denver Board of Education opened the 2017-18 school year.\nVoters approved $572 million."


def test_render_messages_has_system_instructions_and_document():
    for kind in ("rephrase", "reformat"):
        msgs = render_messages(kind, SOURCE)
        assert [m["role"] for m in msgs] == ["system", "user"]
        assert msgs[1]["content"].rstrip().endswith(SOURCE)
    assert REPHRASE_LEAD in render_messages("rephrase", SOURCE)[1]["content"]
    reformat_prompt = render_messages("reformat", SOURCE)[1]["content"]
    assert REFORMAT_HEADING in reformat_prompt and "at most 8" in reformat_prompt
    for kind in ENTRY_KINDS:
        assert kind in reformat_prompt
    with pytest.raises(ValueError, match="unknown generator kind"):
        render_messages("summarise", SOURCE)


def test_render_through_the_smollm2_chat_template():
    from synpro_megatron.generators.backends import load_generator_tokenizer
    from synpro_megatron.generators.smollm2 import smollm2_path

    tok = load_generator_tokenizer(str(smollm2_path(with_weights=False)))
    text = tok.apply_chat_template(render_messages("rephrase", SOURCE), add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    assert "SmolLM" not in text  # our system message replaces the template's default persona


def test_parse_rephrase_strips_the_lead_line():
    completion = f"{REPHRASE_LEAD}\nThe board opened the 2017-18 year.\nVoters approved $572 million."
    assert parse_rephrase(completion) == "The board opened the 2017-18 year.\nVoters approved $572 million."
    # decorated lead, chat-message completion (TRL's conversational format)
    decorated = [{"role": "assistant", "content": f"**{REPHRASE_LEAD}**  Text follows here."}]
    assert parse_rephrase(decorated) == "Text follows here."
    # no lead: the whole text is the rewrite, and the format reward says so
    assert parse_rephrase("Just a rewrite.") == "Just a rewrite."
    assert format_reward("rephrase", completion) == 1.0
    assert format_reward("rephrase", "Sure! " + completion) == 0.5
    assert format_reward("rephrase", "Just a rewrite without the lead.") == 0.0
    assert format_reward("rephrase", completion + "\n" + REPHRASE_LEAD + " again") == 0.0
    assert format_reward("rephrase", REPHRASE_LEAD) == 0.0  # lead with nothing after it


REFORMAT_OUTPUT = f"""{REFORMAT_HEADING}
Topic (factual): School year start
Content: The Denver Board of Education opened the 2017-18 school year.

Topic (comparative): Bond versus mill levy
Content: The bond pays for buildings, while the mill levy supports
programs such as early literacy.

- Topic [Problem Solving]: Funding total
  Content: Voters approved $572 million in bond funding.
Topic: Untagged entry Content: Written on one line without a kind."""


def test_parse_reformat_entries_with_kinds():
    parsed = parse_reformat_detailed(REFORMAT_OUTPUT)
    entries = parsed.entries
    assert [e.kind for e in entries] == ["factual", "comparative", "problem-solving", None]
    assert entries[0] == ReformatEntry("School year start",
                                       "The Denver Board of Education opened the 2017-18 school year.", "factual")
    assert entries[1].content.endswith("programs such as early literacy.")  # continuation line joined
    assert entries[3].topic == "Untagged entry" and entries[3].content == "Written on one line without a kind."
    assert parsed.stray_lines == 0
    text = parse_output("reformat", REFORMAT_OUTPUT)
    assert REFORMAT_HEADING not in text
    assert text.startswith("Topic: School year start\nContent: The Denver")
    assert parse_reformat(reformat_to_text(entries)) == [ReformatEntry(e.topic, e.content) for e in entries]
    assert output_units("reformat", REFORMAT_OUTPUT)[0] == (
        "School year start. The Denver Board of Education opened the 2017-18 school year.")
    assert output_units("rephrase", "anything") is None
    # a small model sometimes tags the Content line instead of the Topic line
    moved = parse_reformat("Topic: Cascara\nContent (analytical): Cascara is a shrub used as a laxative.")
    assert moved == [ReformatEntry("Cascara", "Cascara is a shrub used as a laxative.")]


def test_few_shot_prompt_shows_the_example_once_and_asks_for_the_document():
    msgs = render_messages("reformat", SOURCE, few_shot=True)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert EXAMPLE_SOURCE in msgs[1]["content"] and msgs[2]["content"] == EXAMPLE_ANSWERS["reformat"]
    assert REFORMAT_INSTRUCTIONS not in msgs[3]["content"]  # the instructions are not repeated
    assert source_of(msgs).strip() == SOURCE.strip()
    assert parse_reformat(EXAMPLE_ANSWERS["reformat"])  # the example itself parses as entries
    prefilled = render_messages("rephrase", SOURCE, prefill=True)
    assert prefilled[-1] == {"role": "assistant", "content": PREFILLS["rephrase"]}
    assert source_of(prefilled).strip() == SOURCE.strip()


def test_reformat_format_reward_is_graded():
    assert format_reward("reformat", REFORMAT_OUTPUT) == pytest.approx((1 + 1 + 0.75 + 1) / 4)
    assert format_reward("reformat", "No entries at all, just prose.") == 0.0
    nine = REFORMAT_HEADING + "\n" + "\n".join(f"Topic (factual): t{i}\nContent: c{i}." for i in range(9))
    assert format_reward("reformat", nine) == pytest.approx(0.75)  # too many entries
    chatty = REFORMAT_OUTPUT + "\n\nI hope this helps!"
    assert format_reward("reformat", chatty) < format_reward("reformat", REFORMAT_OUTPUT)
    assert count_marker("reformat", REFORMAT_OUTPUT) == 1


def _word_count(text):
    return len(text.split())


def test_chunking_on_paragraph_boundaries_and_rejoining():
    paragraphs = [" ".join(f"p{i}w{j}." for j in range(30)) for i in range(5)]
    text = "\n\n".join(paragraphs)
    pieces = chunk_source(text, _word_count, max_tokens=70)
    assert pieces == ["\n\n".join(paragraphs[0:2]), "\n\n".join(paragraphs[2:4]), paragraphs[4]]
    assert all(_word_count(p) <= 70 for p in pieces)
    assert join_outputs("rephrase", pieces) == text
    # a single paragraph longer than the budget splits on sentences, never mid-word
    long_para = " ".join(f"Sentence {i} is here." for i in range(40))
    parts = chunk_source(long_para, _word_count, max_tokens=25)
    assert all(_word_count(p) <= 25 for p in parts)
    assert " ".join(parts) == long_para
    # short text: one piece; empty text: none
    assert chunk_source("short text", _word_count, 10) == ["short text"]
    assert chunk_source("   ", _word_count, 10) == []


def test_chunking_with_the_generator_tokenizer():
    from synpro_megatron.generators.backends import load_generator_tokenizer
    from synpro_megatron.generators.smollm2 import smollm2_path

    tok = load_generator_tokenizer(str(smollm2_path(with_weights=False)))
    count = lambda t: len(tok.encode(t, add_special_tokens=False))  # noqa: E731
    text = "\n".join(f"Line {i}: " + "word " * 50 for i in range(10)) + "\n" + "x" * 3000  # one unsplittable run
    pieces = chunk_source(text, count, 64, encode=lambda t: tok.encode(t, add_special_tokens=False),
                          decode=tok.decode)
    assert all(count(p) <= 64 for p in pieces)
    assert "".join(pieces).replace("\n", "").replace(" ", "") == text.replace("\n", "").replace(" ", "")


def test_piece_budget():
    assert piece_token_budget(8192, 300, 1024, "rephrase") == int(1024 / 1.1)
    assert piece_token_budget(8192, 300, 1024, "reformat") == 8192 - 300 - 1024
    with pytest.raises(ValueError, match="window too small"):
        piece_token_budget(512, 400, 256, "rephrase")


def test_rephrase_drops_a_lead_line_in_the_models_own_words():
    from synpro_megatron.generators.prompts import parse_rephrase

    assert parse_rephrase("Here is a rewritten version of the document:\nThe cat sat.") == "The cat sat."
    assert parse_rephrase("Sure! Here's the text in clean prose:\nThe cat sat.\nIt purred.") == "The cat sat.\nIt purred."
    # only a leading line that ends with a colon is chatter; content that starts with "Here is" stays
    assert parse_rephrase("Here is the museum. It opened in 1901.") == "Here is the museum. It opened in 1901."
