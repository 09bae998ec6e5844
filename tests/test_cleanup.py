"""Clean-ups before the gate only remove text: meta sentences, repetition loops, cut-off tails,
repeated and cut-off reformat entries. Cases are real failure shapes of the 135M generator."""
from synpro_megatron.generators.cleanup import (clean_reformat_entries, clean_rephrase, drop_cut_off_tail,
                                                drop_meta_sentences, trim_repetition_loop)
from synpro_megatron.generators.prompts import ReformatEntry
from synpro_megatron.rewards.faithfulness import words

SOURCE = ("We stayed in the room with a balcony. The view is superb. Maria is very helpful and nice to us. "
          "The breakfast is perfectly served too.")


def _is_subsequence(short: str, long: str) -> bool:
    it = iter(words(long))
    return all(w in it for w in words(short))


def test_meta_sentences_and_the_list_of_changes_are_dropped():
    out = ("This is a rewritten version of the document.\nWe stayed in a room with a balcony, and the view was "
           "superb. Maria was helpful and kind.\nI made the following changes:\n- Removed the menu\n- Fixed grammar")
    text, n = drop_meta_sentences(out, SOURCE)
    assert n == 4
    assert text == "We stayed in a room with a balcony, and the view was superb. Maria was helpful and kind."


def test_meta_pattern_that_the_source_uses_is_kept():
    source = "The original text of the treaty was lost. Scholars rebuilt it from copies."
    out = "The original text of the treaty was lost, and scholars rebuilt it from copies."
    assert drop_meta_sentences(out, source) == (out, 0)


def test_repetition_loop_is_cut_where_it_starts():
    out = ("We stayed at the balcony room. The view is superb. The view of the sea is a dream. "
           "The view of the sea is a dream. The view of the sea is a dream.")
    text, cut = trim_repetition_loop(out, SOURCE)
    assert text == "We stayed at the balcony room. The view is superb. The view of the sea is a dream."
    assert cut > 0
    # a near-repeat (most 4-grams seen before) counts too
    out2 = ("Maria is very helpful and nice to all of us. The breakfast is served well. "
            "Maria is very helpful and nice to all the guests.")
    assert trim_repetition_loop(out2, SOURCE)[0] == ("Maria is very helpful and nice to all of us. "
                                                     "The breakfast is served well.")


def test_repetition_the_source_itself_has_is_not_a_loop():
    source = "Sandhu, J. S.; Gotto, G. T. wrote the study.\nSandhu, J. S.; Gotto, G. T. wrote the study."
    out = "Sandhu, J. S.; Gotto, G. T. wrote the study.\nSandhu, J. S.; Gotto, G. T. wrote the study."
    assert trim_repetition_loop(out, source) == (out, 0)


def test_cut_off_last_sentence_is_dropped_only_when_the_source_ends_cleanly():
    out = "The view is superb. Maria is very helpful. The breakfast is perfectly"
    assert drop_cut_off_tail(out, SOURCE) == ("The view is superb. Maria is very helpful.", True)
    assert drop_cut_off_tail(out, "A list without an end\nitem one\nitem two") == (out, False)
    assert drop_cut_off_tail("Maria is very helpful", SOURCE) == ("Maria is very helpful", False)


def test_clean_rephrase_only_removes_words():
    out = ("Here we go. We stayed in a room with a balcony. The view was superb. I made a few changes to improve "
           "clarity. The view was superb and the view was superb. The view was superb and the view was")
    cleaned = clean_rephrase(out, SOURCE)
    assert _is_subsequence(cleaned.text, out)
    assert "I made" not in cleaned.text and not cleaned.text.endswith("was")
    assert len(cleaned.removed) >= 2
    untouched = "We stayed in a room that had a balcony. The view was superb."
    assert clean_rephrase(untouched, SOURCE).text == untouched and not clean_rephrase(untouched, SOURCE).removed


def test_reformat_entries_repeated_or_cut_off_are_dropped():
    entries = [ReformatEntry("View", "The view is superb.", "factual"),
               ReformatEntry("View again", "The view is superb.", "factual"),
               ReformatEntry("Host", "Maria is very helpful and nice.", "factual"),
               ReformatEntry("Breakfast", "The breakfast is perfectly", "factual")]
    kept, notes = clean_reformat_entries(entries, SOURCE)
    assert [e.topic for e in kept] == ["View", "Host"]
    assert len(notes) == 2
    # a source that itself ends without punctuation (a price list) does not make the last entry a cut-off
    prices = [ReformatEntry("Prices", "Tea $2, coffee $3", "factual")]
    assert clean_reformat_entries(prices, "Menu\nTea $2\nCoffee $3")[0] == prices


def test_closing_quotes_and_brackets_stay_with_their_sentence():
    out = 'He told us "Stop." Then he went away (see below.) After that he came back.'
    source = 'He said "Stop." Then he left (see below.) After that he came back.'
    assert clean_rephrase(out, source).text == out
    meta = out + " I made a few changes to the text."
    assert clean_rephrase(meta, source).text == out


def test_first_person_content_of_the_source_is_not_taken_for_chatter():
    source = "We went to Rome last May.\nI removed the old tiles myself. It took two days."
    out = "Last May we went to Rome. I removed the old tiles myself, which took two days."
    assert drop_meta_sentences(out, source) == (out, 0)


def test_a_short_sentence_repeating_a_name_is_not_a_loop():
    source = ("Email the Millbrook Garden Committee before April 20. Questions go to the same address. "
              "Beds are assigned in order.")
    out = ("Email the Millbrook Garden Committee before April 20. Questions? Ask the Millbrook Garden "
           "Committee. Beds are assigned in the order requests arrive.")
    assert trim_repetition_loop(out, source) == (out, 0)


def test_a_list_item_at_the_end_is_not_a_cut_off_sentence():
    out = "Mix the flour and the eggs.\n- Bake it"
    assert drop_cut_off_tail(out, "Mix flour and eggs. Bake it for an hour.") == (out, False)


def test_a_note_on_an_edit_is_dropped():
    source = "Melt margarine in a skillet. Add flour and blend in."
    out = ('Melt the margarine in a skillet, then add the flour and blend it in. I also added a comma after '
           '"Melt" to improve the sentence\'s clarity.')
    assert drop_meta_sentences(out, source) == ("Melt the margarine in a skillet, then add the flour and blend it in.", 1)
