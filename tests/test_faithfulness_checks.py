"""Structured faithfulness checks, coverage and the reward that keeps teaching, through the public
entry point `synpro_megatron.rewards.faithfulness` (and CombinedReward for the group rewards).

Every error kind of issue 13 is one single edit of a hand-written faithful rewrite of a real
web_sample document; each must fail the gate with a reason of its kind. The verifier is switched
off here (verifier="off") so these tests check the structured checks on their own, whatever is
cached on the machine; tests/test_verifier.py covers the verifier.
"""
import pytest

from synpro_megatron.formats import REPHRASE_LEAD
from synpro_megatron.rewards import CombinedReward, FaithfulnessConfig, faithfulness, zscore
from synpro_megatron.rewards.checks import coverage
from test_rewards import FOUR_FAITHFUL, PUBG_FAITHFUL, PUBG_REFORMAT, SYSCO_FAITHFUL, docs  # noqa: F401

OFF = FaithfulnessConfig(verifier="off")

# (name, doc id, faithful rewrite, old text, new text, the error kind its reason must name)
EDITS = [
    ("swapped numbers between two facts", "c4a-00009", SYSCO_FAITHFUL,
     "a $300 million termination fee and pay Performance Food Group, which had agreed to buy some US Foods "
     "facilities, a $12.5 million fee",
     "a $12.5 million termination fee and pay Performance Food Group, which had agreed to buy some US Foods "
     "facilities, a $300 million fee", "number"),
    ("magnitude word", "c4a-00009", SYSCO_FAITHFUL, "$3.5 billion acquisition", "$3.5 million acquisition", "number"),
    ("edited digits that occur elsewhere", "c4a-00017", FOUR_FAITHFUL, "up to 228 meters tall", "up to 45 meters tall",
     "unit"),
    ("changed month", "c4a-00009", SYSCO_FAITHFUL, "sued the companies in February", "sued the companies in May",
     "date"),
    ("changed month (not in source)", "c4a-00009", SYSCO_FAITHFUL, "on June 23", "on July 23", "date"),
    ("changed unit", "c4a-00017", FOUR_FAITHFUL, "16,000 square meter site", "16,000 square feet site", "unit"),
    ("reversed relation", "c4a-00009", SYSCO_FAITHFUL, "The FTC had sued the companies",
     "The companies had sued the FTC", "relation"),
    ("entity swapped within the source", "c4a-00009", SYSCO_FAITHFUL, "Sysco has a large warehouse",
     "US Foods has a large warehouse", "entity"),
    ("invented appositive", "c4a-00038", PUBG_FAITHFUL, "NetEase quickly copied PUBG",
     "NetEase, a publisher founded by former banking executives, quickly copied PUBG", "addition"),
    ("invented claim", "c4a-00017", FOUR_FAITHFUL, "FOUR Frankfurt is expected",
     "Critics argue the skyscrapers will overshadow historic churches nearby. FOUR Frankfurt is expected", "addition"),
    ("quantifier most -> all", "c4a-00038", PUBG_FAITHFUL, "It managed to fit much of the PC and Xbox game",
     "It managed to fit all of the PC and Xbox game", "quantifier"),
    ("number word", "c4a-00009", SYSCO_FAITHFUL, "over the next two years", "over the next three years", "number"),
    ("negation added", "c4a-00038", PUBG_FAITHFUL, "were very impressed", "were not impressed", "negation"),
    # a figure of the source copied over another of the same kind in the sentence that rewrites it
    ("figure copied over another", "c4a-00009", SYSCO_FAITHFUL, "gained 3.1 percent", "gained 3.3 percent", "number"),
    ("entity moved onto another's anchor", "c4a-00009", SYSCO_FAITHFUL, "runs a major distribution center in Fishers",
     "runs a major distribution center in Indianapolis", "entity"),
    ("negation dropped in a merged sentence", "c4a-00009", SYSCO_FAITHFUL,
     "had considered an appeal but decided not to pursue one", "had considered an appeal and decided to pursue one",
     "negation"),
]
SURVEY = ("Most residents did not support the new parking fees, according to a survey by the city council. "
          "The council will not vote on the plan until March, when the survey results are published.")
SURVEY_FAITHFUL = ("According to a city council survey, most residents did not back the new parking fees. The council "
                   "will not vote on the plan before March, when the survey results come out.")


@pytest.mark.parametrize("name,doc_id,faithful,old,new,kind", EDITS, ids=[e[0] for e in EDITS])
def test_each_error_kind_fails_with_its_reason(docs, name, doc_id, faithful, old, new, kind):  # noqa: F811
    assert old in faithful, "the edit must apply to the faithful rewrite"
    source = docs[doc_id]
    ok = faithfulness(source, faithful, config=OFF)
    bad = faithfulness(source, faithful.replace(old, new), config=OFF)
    assert ok.passed, ok.reasons
    assert not bad.passed, f"{name} slipped through"
    if kind:
        assert any(r.startswith(f"{kind}:") for r in bad.reasons), bad.reasons
    assert bad.score < ok.score


@pytest.mark.parametrize("old,new,kind", [("The council will not vote", "The council will vote", "negation"),
                                          ("most residents", "all residents", "quantifier")])
def test_negation_dropped_and_quantifier_changed(old, new, kind):
    assert faithfulness(SURVEY, SURVEY_FAITHFUL, config=OFF).passed
    bad = faithfulness(SURVEY, SURVEY_FAITHFUL.replace(old, new), config=OFF)
    assert not bad.passed and any(r.startswith(f"{kind}:") for r in bad.reasons), bad.reasons


def assert_edit_fails(source, faithful, old, new, kind, output_kind="rephrase"):
    """The faithful rewrite passes; with `old` replaced by `new` it fails with a reason of `kind`."""
    assert old in faithful, "the edit must apply to the faithful rewrite"
    ok = faithfulness(source, faithful, kind=output_kind, config=OFF)
    assert ok.passed, ok.reasons
    bad = faithfulness(source, faithful.replace(old, new), kind=output_kind, config=OFF)
    assert not bad.passed and any(r.startswith(f"{kind}:") for r in bad.reasons), (old, bad.reasons)


def test_a_negation_added_next_to_one_the_source_has_fails():
    source = ("Each species shows distinct colour patterns to signal its mood. The Meller's chameleon is the largest "
              "of the chameleons not native to Madagascar. Its stout body can grow to two feet long.")
    faithful = ("Every species signals its mood with distinct colour patterns. Of the chameleons not native to "
                "Madagascar, the Meller's chameleon is the largest. Its stout body can reach two feet in length.")
    assert_edit_fails(source, faithful, "chameleon is the largest", "chameleon is not the largest", "negation")


def test_a_price_or_a_negative_word_next_door_excuses_no_not():
    """"free" as a price may become "costs nothing", but excuses no "not" on a predicate; "rather than"
    in another sentence excuses no "not" on a predicate of this one (both slipped through before)."""
    source = ("Capital Services has launched a new community discount card program called Capital Advantage. The "
              "program is free and easy to use, and every member can start saving at once. Click the My Capital "
              "Advantage tab for more information.")
    faithful = ("Capital Services has started a new community discount card program, Capital Advantage. The program "
                "costs nothing and is easy to use, and every member can begin saving at no cost right away. More "
                "information is under the My Capital Advantage tab.")
    assert_edit_fails(source, faithful, "every member can begin", "every member can not begin", "negation")
    assert_edit_fails(source, faithful, "every member can begin", "no member can begin", "negation")
    assert_edit_fails(source, faithful, "The program costs nothing and is", "The program is not free and is", "negation")
    source = ("'In terms of' confuses, rather than clarifies, your sentences and their meaning. How would these terms "
              "make the meaning of a sentence any clearer? So we do not want to hear any more 'in terms of' sentences.")
    faithful = ("How would these terms make the meaning of a sentence clearer? 'In terms of' confuses your sentences "
                "and their meaning rather than clarifying them. So we do not want to hear more 'in terms of' sentences.")
    assert_edit_fails(source, faithful, "these terms make", "these terms not make", "negation")


@pytest.mark.parametrize("source,rewrite", [
    # the negation kept in a fragment the parser hangs on another word
    ("My nice calm human still sometimes bangs pots and pans in the kitchen sink, making an awful noise that prompts "
     "me to excuse myself through my door to visit the yard. But the world is becoming more peaceful, not so "
     "interrupted by other dogs barking, trucks collecting trash, and screaming TVs.",
     "Making an awful noise that prompts me to excuse myself through my door to visit the yard, my nice calm human "
     "still sometimes bangs pots and pans in the kitchen sink. Not so interrupted by other dogs barking."),
    # two clauses swapped: the negation moves with its clause
    ("Tish tries to start a normal life, but her past is catching up with her. Someone is sabotaging her work, "
     "and Brad hasn't called in months.",
     "Tish tries to start a normal life, but her past is catching up with her. And Brad hasn't called in months, "
     "someone is sabotaging her work."),
])
def test_a_negation_that_moves_with_its_words_passes(source, rewrite):
    from synpro_megatron.rewards.checks import analyse_many, check_negation

    assert check_negation(*analyse_many([source, rewrite])) == []


def test_scores_are_one_figure_and_number_words_are_placed():
    source = ("Azarenka beat Stephens 6-1, 6-4 in the semi-final. Murray needed four and a half hours to beat Federer, "
              "who had rested for two days.")
    faithful = ("In the semi-final Azarenka defeated Stephens 6-1, 6-4. It took Murray four and a half hours to beat "
                "Federer, who had two days of rest.")
    for old, new in (("6-4", "6-2"), ("four and a half", "two and a half")):
        assert_edit_fails(source, faithful, old, new, "number")


def test_currency_abbreviation_amounts_are_checked():
    source = ("The municipal corporation approved a budget of Rs.450 crore for the new water pipeline, and the state "
              "government will add Rs. 120 crore for pumping stations. Work starts in March and should take two years.")
    faithful = ("The state government will contribute Rs. 120 crore for pumping stations, while the municipal corporation "
                "approved Rs.450 crore for the new water pipeline. Work begins in March and should last two years.")
    changed = faithful.replace("Rs.450 crore", "Rs.650 crore")
    swapped = faithful.replace("Rs. 120 crore", "$120 million")
    assert faithfulness(source, faithful, config=OFF).passed, faithfulness(source, faithful, config=OFF).reasons
    for bad in (changed, swapped):
        result = faithfulness(source, bad, config=OFF)
        assert not result.passed and any(r.startswith(("number:", "unit:")) for r in result.reasons), result.reasons


def test_reordering_and_boilerplate_removal_pass(docs):  # noqa: F811
    source = docs["c4a-00038"]
    paragraphs = PUBG_FAITHFUL.split("\n")
    reordered = "\n".join([paragraphs[0], paragraphs[2], paragraphs[1]] + paragraphs[3:])
    result = faithfulness(source, reordered, config=OFF)
    assert result.passed, result.reasons
    cluttered = ("Home | Games | Reviews | Login\nShare this: Facebook Twitter Email\n" + source
                 + "\nComments (0)\nSubscribe to our newsletter for the latest news!\n© 2018 All rights reserved")
    clean = faithfulness(cluttered, PUBG_FAITHFUL, config=OFF)
    assert clean.passed, clean.reasons


def test_wrong_topic_over_correct_content_fails(docs):  # noqa: F811
    source = docs["c4a-00038"]
    ok = faithfulness(source, PUBG_REFORMAT, kind="reformat", config=OFF)
    assert ok.passed, ok.reasons
    # the last entry's content under a topic taken from another part of the document
    wrong = PUBG_REFORMAT.replace("Competition from other Chinese companies", "A realistic setting versus a cartoon look")
    bad = faithfulness(source, wrong, kind="reformat", config=OFF)
    assert not bad.passed and any(r.startswith("topic:") for r in bad.reasons), bad.reasons



PRACTICE = ("She was the first Queensland-born woman to graduate in medicine. Although she met opposition from some "
            "male colleagues, her bright personality and attentive care gradually attracted patients, and she built up "
            "a successful practice. For the first time since Fuji TV cancelled Pride, the league's president spoke "
            "with the press.")


@pytest.mark.parametrize("rewrite,kind", [
    # subject and object traded by word order: the parser reads the two sentences differently
    ("She was the first woman born in Queensland to graduate in medicine. Although she met opposition from some "
     "male colleagues, patients and attentive care gradually attracted her bright personality, and she built up a "
     "successful practice.", "relation"),
    # a name of the source put where the source names another one
    ("Although she met opposition from some male colleagues, her bright personality and attentive care gradually "
     "attracted patients. For the first time since Fuji TV cancelled Fuji TV, the league's president spoke with "
     "the press.", "entity"),
])
def test_word_order_reversal_and_a_name_put_over_another_fail(rewrite, kind):
    bad = faithfulness(PRACTICE, rewrite, config=OFF)
    assert not bad.passed and any(r.startswith(f"{kind}:") for r in bad.reasons), bad.reasons


@pytest.mark.parametrize("source,rewrite", [
    (PRACTICE, "She was the first woman born in Queensland to graduate in medicine. Patients were gradually attracted "
               "by her bright personality and attentive care, although some male colleagues opposed her, and she "
               "built up a successful practice."),  # passive voice: the same relation
    ("Profits rose sharply in the third quarter, the company said, after Microsoft bought LinkedIn.",
     "The company said profits rose sharply in the third quarter after Microsoft bought LinkedIn."),  # who said it
    ("Tencent released the official version of PlayerUnknown's Battlegrounds (PUBG) on iOS and Android this week.",
     "This week Tencent released the official version of PUBG on iOS and Android."),  # the source's own alias
])
def test_voice_reporting_order_and_aliases_pass(source, rewrite):
    from synpro_megatron.rewards.checks import check_entity_replacements, check_order_swaps, analyse_many

    src, out = analyse_many([source, rewrite])
    assert check_order_swaps(src, out) == [] and check_entity_replacements(src, out) == []


def test_a_topic_lifted_from_the_sentence_before_fails(docs):  # noqa: F811
    """A lead-in may title the entry after it in its own words ("Competition from other Chinese companies"
    over the NetEase entry passes above); its noun phrase lifted word for word over content that shares
    no word with it names the lead-in instead."""
    source = ("No Cardinal advanced past second base in the game. The shutout was the first this season against the "
              "Cardinals. He improved to 10-0 in 12 starts, with three complete games and one shutout. He has a "
              "3.12 ERA in 80.2 innings of work, with 97 strikeouts against just 31 walks. The team travels to "
              "Denver on Friday for a three-game series against the Rockies.")
    right = ("Topic: A dominant pitching performance\nContent: No Cardinal advanced past second base in the game.\n\n"
             "Topic: A shutout this season\nContent: The shutout was the first this season against the "
             "Cardinals.\n\nTopic: An unbeaten record\nContent: He improved to 10-0 in 12 starts, with three "
             "complete games and one shutout.")
    assert faithfulness(source, right, kind="reformat", config=OFF).passed
    wrong = right.replace("A shutout this season", "Second base")
    bad = faithfulness(source, wrong, kind="reformat", config=OFF)
    assert not bad.passed and any(r.startswith("topic:") for r in bad.reasons), bad.reasons


def test_a_noun_the_sentence_before_mentions_in_passing_is_no_title(docs):  # noqa: F811
    """One word lifted from the lead-in fails when the lead-in only mentions it after a preposition
    ("spoke with the press"); the lead-in's theme may title the next entry ("Competition" over NetEase)."""
    source = ("For the first time since Fuji TV cancelled Pride earlier this week, DSE President Nobuyuki Sakakibara "
              "spoke with the press. Fuji TV also announced that fighters associated with Pride cannot appear on any "
              "Fuji TV program.")
    right = ("Topic: Sakakibara speaks after the cancellation\nContent: DSE President Nobuyuki Sakakibara spoke with the "
             "press for the first time since Fuji TV cancelled Pride earlier this week.\n\nTopic: A ban from Fuji TV "
             "programs\nContent: Fuji TV also announced that fighters associated with Pride cannot appear on any Fuji "
             "TV program.")
    assert_edit_fails(source, right, "A ban from Fuji TV programs", "The press", "topic", output_kind="reformat")
    theme = PUBG_REFORMAT.replace("Competition from other Chinese companies", "Competition")
    result = faithfulness(docs["c4a-00038"], theme, kind="reformat", config=OFF)
    assert result.passed, result.reasons


def test_coverage_separates_a_partial_rewrite_from_a_full_one(docs):  # noqa: F811
    source = docs["c4a-00009"]
    paragraphs = SYSCO_FAITHFUL.split("\n")
    partial = "\n".join(paragraphs[:3])  # about 30% of the content, faithful
    full_cov, part_cov = coverage(source, SYSCO_FAITHFUL), coverage(source, partial)
    assert full_cov > 0.85 and part_cov < 0.55
    full, part = faithfulness(source, SYSCO_FAITHFUL, config=OFF), faithfulness(source, partial, config=OFF)
    assert full.passed and part.passed
    assert part.score < full.score - 0.15, (part.score, full.score)


def test_an_all_failing_group_still_has_ordered_advantages(docs):  # noqa: F811
    """Nothing passes the gate, yet the rewards differ and GRPO's advantages follow the soft
    faithfulness score; a passing completion in the same group would outrank all of them."""
    source = docs["c4a-00009"]
    one = SYSCO_FAITHFUL.replace("$3.5 billion", "$3.5 million")
    two = one.replace("sued the companies in February", "sued the companies in March")
    three = two.replace("over the next two years", "over the next five years")
    completions = [f"{REPHRASE_LEAD}\n{t}" for t in (two, one, three)]
    reward = CombinedReward("rephrase", faithfulness_config=OFF)
    values, rows = reward.score([source] * 3, completions, group_keys=["g"] * 3)
    assert not any(r["passed"] for r in rows)
    scores = [r["faithfulness"] for r in rows]
    assert scores[1] > scores[0] > scores[2]  # one finding, two, three
    advantages = zscore(values)
    assert all(abs(a) > 0.1 for a in advantages)
    assert advantages[1] > advantages[0] > advantages[2]
    # with a passing completion in the group, it ranks above every failure
    mixed, rows = reward.score([source] * 4, completions + [f"{REPHRASE_LEAD}\n{SYSCO_FAITHFUL}"], group_keys=["g"] * 4)
    assert rows[3]["passed"] and mixed[3] > max(mixed[:3])


def test_initials_of_a_name_the_source_spells_out_are_that_name():
    """A real SmolLM2 rewrite shortened "the Los Angeles Police Department" to "the LA police" (a person
    calls it faithful; the gate rejected it as a new place); initials of no source name still fail."""
    source = ("Key to our success as a leader in commercial office safety is our relationships with the Los Angeles "
              "Police Department and other police agencies. We meet with their officers every month.")
    faithful = ("Our success as a leader in commercial office safety rests on our ties with the LA police and other "
                "police agencies. We meet their officers every month.")
    assert_edit_fails(source, faithful, "the LA police", "the NYPD", "entity")


def test_a_question_turned_into_a_statement_fails():
    """A real SmolLM2 rewrite: the source asks whether she should return, the rewrite says she should.
    Keeping the question, or saying it stays open ("whether"), passes."""
    source = ("When readers last saw Tish Amble she was running for her life. Someone is sabotaging her work, and Brad "
              "hasn't called in months. Should she return to Michigan to find out what has happened?")
    faithful = ("Tish Amble was last seen running for her life. Someone is sabotaging her work and Brad has not called "
                "in months. Should she return to Michigan to learn what has happened?")
    assert_edit_fails(source, faithful, "Should she return to Michigan to learn what has happened?",
                      "She should return to Michigan to learn what has happened.", "addition")
    still_open = faithful.replace("Should she return to Michigan to learn what has happened?",
                                  "She must decide whether to return to Michigan to learn what has happened.")
    result = faithfulness(source, still_open, config=OFF)
    assert result.passed, result.reasons
