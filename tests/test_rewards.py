"""Rewards: the faithfulness gate on real documents with hand-written rewrites, degenerate outputs,
quality, influence (a real gradient-alignment scorer on a tiny LM) and their combination."""
import gzip
import json
import math
from pathlib import Path

import pytest

from synpro_megatron.generators.prompts import REPHRASE_LEAD, instruction_text
from synpro_megatron.rewards import (CombinedReward, FaithfulnessConfig, InfluenceReward,
                                     QualityConfig, RewardWeights, faithfulness, heuristic_quality, quality_reward,
                                     zscore)
from synpro_megatron.rewards.faithfulness import numbers_in, source_number_set
from gradient_dot_scorer import GradientDotScorer

SAMPLE = Path(__file__).resolve().parent.parent / "synpro_megatron" / "assets" / "web_sample.jsonl.gz"


@pytest.fixture(scope="module")
def docs():
    wanted = {"c4a-00009", "c4a-00017", "c4a-00038", "c4a-00004"}
    out = {}
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if rec["id"] in wanted:
                out[rec["id"]] = rec["text"]
    assert set(out) == wanted
    return out


# Hand-written rewrites of real web_sample documents. *_FAITHFUL keeps every fact in new words;
# the variants change a number, insert a person/place, or add a sentence the source does not support.
SYSCO_FAITHFUL = """Sysco Corp. said on Monday that it has called off its planned $3.5 billion acquisition of US Foods after a federal judge blocked the deal. Instead, the company will put an extra $3 billion into its stock-buyback program.
Because the deal fell apart, Sysco will pay US Foods a $300 million termination fee and pay Performance Food Group, which had agreed to buy some US Foods facilities, a $12.5 million fee. Houston-based Sysco plans to carry out the share repurchases over the next two years.
US Foods, which is based in Rosemont, Illinois, runs a major distribution center in Fishers. Sysco has a large warehouse in Indianapolis at 4000 W. 62nd St.
For more than a year Sysco tried to win government approval for the transaction, which antitrust regulators said would reduce competition and raise prices. Sysco and US Foods dominate broadline foodservice, the market that supplies restaurants, hotels and school cafeterias. Sysco had claimed the acquisition would save $1 billion and let it lower prices for customers.
Investors were relieved that the deal died, reflecting worries about the company taking on an ambitious merger. Sysco shares gained 3.1 percent on the day U.S. District Judge Amit Mehta halted the transaction, and the stock rose again on Monday morning after the merger was withdrawn.
Mehta blocked the merger on June 23, granting a Federal Trade Commission request to delay it. The FTC had sued the companies in February, arguing that the deal would give Sysco, already the biggest player in the industry, an oversized share of it.
When the two sides argued before Mehta in May, they disagreed about the scope of the market in which the companies compete. Sysco and US Foods said the commission relied on a "tortured" analysis that ignored the many distribution channels open to customers.
On Monday Sysco said it had considered an appeal but decided not to pursue one.
In early trading Sysco shares rose as much as 1.6 percent to $39. Through the end of last week the stock had fallen 3.3 percent this year."""

FOUR_FAITHFUL = """UNStudio and HPP Architects have formed a consortium, UNS + HPP, to take their winning design for FOUR Frankfurt, chosen in an architectural competition, into its next phases.
According to the architects, the real estate developer Groß & Partner, which will develop the project, bought the central 16,000 square meter site in 2015. The site lies at the very heart of the city and has been closed to the public for the last 45 years. Four new high-rise towers, up to 228 meters tall, will now change Frankfurt's skyline while bringing life to the street level. The towers will open new streets and create a lively, mixed-use quarter in the inner city that combines work, living, relaxation and recreation.
The mix of uses creates a smooth transition from Frankfurt's shopping district east of Roßmarkt to the office towers grouped around Park Taunusanlage. With a development concept unique in Europe, FOUR Frankfurt combines facilities that will form a lively new neighbourhood for the city, its visitors and its future residents.
The complex will be tied into the growing city structure by keeping the heritage-listed facades of the Junghofstraße in the design and by using a multi-storey base building to connect the whole site.
The competition jury found that the quarter's special quality lies in its public development and amenity value. The project will therefore create connected spaces, accessible rooftops, pathways and passages. The existing block on the Junghofstraße will be opened to strengthen the surrounding pathways and make the area highly accessible. The result will be a diverse, mixed-use quarter with 50% office space and 30% living accommodation, including subsidized housing, as well as shops, restaurants and hotels.
FOUR Frankfurt is expected to be finished in 2023."""

PUBG_FAITHFUL = """Thanks to Tencent, one of the world's biggest games can now be played on smartphones everywhere. The Chinese company's official version of PlayerUnknown's Battlegrounds (PUBG) is now out worldwide on iOS and Android.
We played PUBG on an iPhone X when it launched in China last month and were very impressed. It managed to fit much of the PC and Xbox game onto a far smaller screen, and in places it looked even better than the Xbox One version.
It arrives a week after rival Fortnite started inviting players to try its own mobile version. Unlike PUBG, Fortnite will support cross-platform play, so iPhone players can kill or be killed by people playing on PC or PlayStation 4.
Fortnite recently overtook PUBG, the pioneer of the genre, in popularity. In both games 100 players land on a deserted island full of weapons and fight to be the last one standing. PUBG uses a realistic setting, while Fortnite looks more like a cartoon, and its focus on building structures sets it apart from its rival.
Still, Tencent's main competition for PUBG on mobile may come from other Chinese companies. NetEase quickly copied PUBG and released similar smartphone games while the original was still only on PC. NetEase says one of its clones, Knives Out, alone has more than 100 million registered players, far more than the 40 million who play PUBG on PC and Xbox."""

CASES = {  # doc id -> (faithful, changed number, inserted person/place, added unsupported sentence)
    "c4a-00009": (
        SYSCO_FAITHFUL,
        SYSCO_FAITHFUL.replace("$300 million termination fee", "$350 million termination fee"),
        SYSCO_FAITHFUL.replace("Sysco has a large warehouse", "Sysco, led by chief executive Thomas Mueller, has a large warehouse"),
        SYSCO_FAITHFUL.replace("decided not to pursue one.", "decided not to pursue one.\nAnalysts expect the frozen "
                               "vegetable business to become the fastest growing part of the grocery trade over the coming decade."),
    ),
    "c4a-00017": (
        FOUR_FAITHFUL,
        FOUR_FAITHFUL.replace("228 meters", "250 meters"),
        FOUR_FAITHFUL.replace("east of Roßmarkt", "east of Roßmarkt near Berlin"),
        FOUR_FAITHFUL.replace("FOUR Frankfurt is expected", "The towers will also be heated by a geothermal plant buried "
                              "deep below the foundations.\nFOUR Frankfurt is expected"),
    ),
    "c4a-00038": (
        PUBG_FAITHFUL,
        PUBG_FAITHFUL.replace("100 million registered", "150 million registered"),
        PUBG_FAITHFUL.replace("Thanks to Tencent,", "Thanks to Tencent and its founder Pony Ma,"),
        PUBG_FAITHFUL.replace("We played PUBG", "Many teachers worry that students spend too much of their homework "
                              "time on video games.\nWe played PUBG"),
    ),
}

PUBG_REFORMAT = """Topic (factual): PUBG on mobile
Content: Tencent's official version of PlayerUnknown's Battlegrounds is now available worldwide on iOS and Android.

Topic (comparative): PUBG and Fortnite
Content: PUBG has a realistic setting, while Fortnite looks more like a cartoon and puts an emphasis on building structures.

Topic (factual): How a match works
Content: In both games 100 players land on a deserted island filled with weapons and fight to be the last one standing.

Topic (analytical): Competition from other Chinese companies
Content: NetEase copied PUBG early, and its clone Knives Out has over 100 million registered players, more than the 40 million playing PUBG on PC and Xbox."""


@pytest.mark.parametrize("doc_id", sorted(CASES))
def test_faithful_paraphrase_passes_and_each_corruption_fails(docs, doc_id):
    source = docs[doc_id]
    faithful, number, entity, added = CASES[doc_id]
    ok = faithfulness(source, faithful)
    assert ok.passed, ok.reasons
    assert 0.8 < ok.score <= 1.0

    bad_number = faithfulness(source, number)
    assert not bad_number.passed
    assert any(r.startswith("numbers not in the source") for r in bad_number.reasons), bad_number.reasons

    bad_entity = faithfulness(source, entity)
    assert not bad_entity.passed
    assert any(r.startswith("named entities not in the source") for r in bad_entity.reasons), bad_entity.reasons

    bad_sentence = faithfulness(source, added)
    assert not bad_sentence.passed
    assert any(r.startswith("unsupported sentence") for r in bad_sentence.reasons), bad_sentence.reasons
    for result in (bad_number, bad_entity, bad_sentence):
        assert result.score < ok.score


def test_reformat_entries_are_checked_as_units(docs):
    source = docs["c4a-00038"]
    ok = faithfulness(source, PUBG_REFORMAT, kind="reformat")
    assert ok.passed, ok.reasons
    invented = PUBG_REFORMAT + ("\n\nTopic (conceptual): Battle royale\nContent: A battle royale is a genre "
                                "invented by Japanese novelists in the 1990s.")
    bad = faithfulness(source, invented, kind="reformat")
    assert not bad.passed
    assert any("unsupported entry" in r or "not in the source" in r for r in bad.reasons), bad.reasons
    assert not faithfulness(source, "Some prose without any entries at all.", kind="reformat").passed


def test_degenerate_outputs_never_pass(docs):
    source = docs["c4a-00009"]
    first_line = source.splitlines()[0]
    cases = {
        "empty": "",
        "whitespace": "  \n ",
        "prompt echo": instruction_text("rephrase"),
        "repeated line": "\n".join([first_line] * 8),
        "refusal": "I'm sorry, but as an AI language model I cannot rewrite this document.",
        "verbatim copy": source,
        "near copy": source.replace("Monday", "Tuesday", 1),
    }
    for kind in ("rephrase", "reformat"):
        for name, output in cases.items():
            if kind == "reformat" and name in ("verbatim copy", "near copy"):
                continue  # a copy is not a reformat anyway: no entries parse (checked below)
            result = faithfulness(source, output, kind=kind)
            assert not result.passed, f"{kind}/{name} passed"
            assert result.reasons
    assert not faithfulness(source, source, kind="reformat").passed
    copy = faithfulness(source, source)
    assert any("verbatim copy" in r for r in copy.reasons)
    assert faithfulness(source, "").score == 0.0


def test_refusal_words_quoted_from_the_source_are_not_a_refusal():
    source = ("Maria told the council: I cannot support this budget. The council approved the budget anyway "
              "after a long debate about the new library.")
    output = ("Maria told the council that she could not back the budget, saying: I cannot support this budget. "
              "The council still approved it after a long debate about the new library.")
    result = faithfulness(source, output)
    assert not any("refusal" in r for r in result.reasons), result.reasons


def test_number_normalisation():
    assert numbers_in("It cost 1,000 dollars, then 3.50 and 07.") == ["1000", "3.5", "7"]
    assert "1000" in source_number_set("a price of 1000")
    assert "3" in source_number_set("three new towers")
    source = "The stadium holds 1,000 people and opened three years ago in Leeds after a long delay."
    ok = faithfulness(source, "Opened in Leeds three years ago after a long delay, the stadium holds 1000 people.")
    assert ok.passed, ok.reasons
    assert ok.details["number_precision"] == 1.0
    # list markers are not numbers the source must contain
    listed = faithfulness(source, "1. The stadium in Leeds holds 1000 people.\n2. It opened three years ago after a long delay.")
    assert listed.details["number_precision"] == 1.0


def test_length_ratio_bounds(docs):
    source = docs["c4a-00038"]
    assert faithfulness(source, PUBG_FAITHFUL).details["length_ratio"] == pytest.approx(0.95, abs=0.02)
    tight = FaithfulnessConfig(length_ratio={"rephrase": (0.25, 0.9), "reformat": (0.05, 1.5)})
    result = faithfulness(source, PUBG_FAITHFUL, config=tight)
    assert not result.passed and any(r.startswith("length ratio") for r in result.reasons)
    doubled = PUBG_FAITHFUL + "\n" + PUBG_FAITHFUL.replace("Thanks to Tencent", "Because of Tencent")
    assert not faithfulness(source, doubled).passed  # 2x the source (caught as repetition first)
    short = faithfulness(source, "NetEase quickly copied PUBG.")
    assert any(r.startswith("length ratio") for r in short.reasons)


def test_judge_slot_and_threshold_config(docs):
    source = docs["c4a-00038"]
    calls = []

    def judge(src, out):
        calls.append((src, out))
        return 0.2

    judged = faithfulness(source, PUBG_FAITHFUL, config=FaithfulnessConfig(judge=judge))
    assert calls == [(source, PUBG_FAITHFUL)]
    assert not judged.passed and any(r.startswith("judge score") for r in judged.reasons)
    strict = faithfulness(source, PUBG_FAITHFUL, config=FaithfulnessConfig(align_threshold=0.99))
    assert not strict.passed


# ------------------------------------------------------------------------------------- quality

def test_quality_uses_datatrove_filters_and_rewards_improvement(docs):
    clean = heuristic_quality(docs["c4a-00009"])
    assert clean.score == pytest.approx(1.0) and all(clean.filters.values())
    spam = heuristic_quality("Buy now!\nClick here\nBuy now!\nClick here\nShare\nLogin")
    assert spam.score < 0.5 and not spam.filters["gopher_quality"]
    boilerplate = "Home | About | Contact\nShare on Facebook\n" + docs["c4a-00009"][:600]
    delta = quality_reward([boilerplate], [docs["c4a-00009"][:600]])
    assert delta[0] > 0  # removing the clutter is rewarded
    assert quality_reward([docs["c4a-00009"]], [docs["c4a-00009"]]) == [0.0]
    hooked = QualityConfig(classifier=lambda texts: [1.0 if "Sysco" in t else 0.0 for t in texts],
                           classifier_weight=0.5)
    assert quality_reward(["Sysco news. " * 60], ["Other news. " * 60], hooked)[0] < 0


# ------------------------------------------------------------------------------------- influence

@pytest.fixture(scope="module")
def tiny_lm():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from synpro_megatron.generators.backends import load_generator_tokenizer
    from synpro_megatron.generators.smollm2 import smollm2_path

    tok = load_generator_tokenizer(str(smollm2_path(with_weights=False)))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config), tok


REFERENCE = ["The school board approved new construction funding for schools.",
             "Voters approved bond funding to build and improve schools."]


def test_gradient_dot_scorer_matches_a_real_sgd_step(tiny_lm):
    import torch

    model, tok = tiny_lm
    scorer = GradientDotScorer(model, tok, REFERENCE, lr=1e-2, last_blocks=2)
    text = "The board approved funding to improve schools and build new ones."
    predicted = float(scorer.score([text])[0])

    def ref_loss():
        with torch.no_grad():
            return sum(model(**{"input_ids": tok(t, return_tensors="pt", add_special_tokens=False)["input_ids"],
                                "labels": tok(t, return_tensors="pt", add_special_tokens=False)["input_ids"]}).loss
                       for t in REFERENCE) / len(REFERENCE)

    before = float(ref_loss())
    saved = [p.detach().clone() for p in scorer.params]
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    for p in scorer.params:
        p.requires_grad_(True)
    grads = torch.autograd.grad(model(input_ids=ids, labels=ids).loss, scorer.params)
    with torch.no_grad():
        for p, g in zip(scorer.params, grads):
            p -= 1e-2 * g
    drop = before - float(ref_loss())
    with torch.no_grad():
        for p, s in zip(scorer.params, saved):
            p.copy_(s)
    assert predicted > 0
    assert predicted == pytest.approx(drop, rel=0.2)  # first order agrees with the real step


def test_influence_reward_is_output_minus_source_with_cached_sources(tiny_lm):
    model, tok = tiny_lm
    scorer = GradientDotScorer(model, tok, REFERENCE, lr=1e-2)
    calls = []

    class Counting:
        def score(self, texts):
            calls.append(list(texts))
            return scorer.score(texts)

    reward = InfluenceReward(Counting())
    source = "Voters approved funding for schools. Click here to share on Facebook. Login. Home."
    outputs = ["Voters approved bond funding to build and improve schools.", "A recipe for lemon cake with sugar."]
    values = reward([source, source], outputs)
    expected = scorer.score(outputs) - scorer.score([source])[0]
    assert values == pytest.approx(expected.tolist())
    assert values[0] > values[1]  # the on-topic rewrite helps the reference set more
    reward([source], ["Another output."])
    assert sum(source in c for c in calls) == 1  # the source was scored once


# ------------------------------------------------------------------------------------- combine

def test_zscore():
    assert zscore([1.0, 1.0, 1.0]) == [0.0, 0.0, 0.0]
    z = zscore([1.0, 2.0, 3.0])
    assert sum(z) == pytest.approx(0.0) and z[2] == pytest.approx(math.sqrt(1.5))


def test_combined_reward_gates_normalises_and_logs(docs, tiny_lm):
    model, tok = tiny_lm
    source = docs["c4a-00038"]
    faithful = f"{REPHRASE_LEAD}\n{PUBG_FAITHFUL}"
    no_lead = PUBG_FAITHFUL
    changed = f"{REPHRASE_LEAD}\n" + CASES["c4a-00038"][1]
    refusal = "I'm sorry, I cannot help with that."
    completions = [[{"role": "assistant", "content": c}] for c in (faithful, no_lead, changed, refusal)]
    metrics = {}
    reward = CombinedReward("rephrase", influence=GradientDotScorer(model, tok, REFERENCE, lr=1e-2))
    values = reward(prompts=[None] * 4, completions=completions, source=[source] * 4, doc_id=["g"] * 4,
                    log_metric=lambda name, value: metrics.__setitem__(name, value))
    assert -1.0 <= values[3] < values[2] < 0.0  # failed the gate; the near miss ranks above the refusal
    assert values[0] >= 1.0 and values[1] >= 1.0  # passed: always above any failure
    assert values[0] > values[1]  # same content, but only one has the lead line (format)
    w = RewardWeights()
    assert values[0] - values[1] == pytest.approx(w.format * 2 + w.quality * 0 + 0, abs=w.influence * 2 + 1e-6)
    entry = reward.history[-1]
    assert entry["gate_pass_rate"] == 0.5 and entry["completions"] == 4
    assert entry["influence"] is not None and entry["quality"] is not None
    for key in ("faithfulness", "gate_pass_rate", "quality", "format", "influence", "combined"):
        assert f"synpro/{key}" in metrics

    # two groups are normalised separately; a group where nothing passes stays below zero
    values2 = reward(prompts=None, completions=[faithful, faithful, refusal, refusal],
                     source=[source, source, source, source], doc_id=["a", "a", "b", "b"])
    assert values2[0] == values2[1] > 0 and values2[2] == values2[3] < 0.0


def test_combined_reward_requires_the_source_column():
    with pytest.raises(ValueError, match="source"):
        CombinedReward("rephrase")(prompts=["p"], completions=["c"])


def test_gate_models_run_on_cuda_when_there_is_one(monkeypatch):
    """The gate's MiniLM (and a verifier) sit where gate_device() says: CUDA when the machine has
    it, so scoring beside a vLLM engine does not queue on the CPU; SYNPRO_GATE_DEVICE overrides.
    (bench/gpu_check.sh runs this on a GPU machine.)"""
    import torch

    from synpro_megatron.rewards.faithfulness import gate_device, sentence_encoder

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    monkeypatch.delenv("SYNPRO_GATE_DEVICE", raising=False)
    assert gate_device() == expected
    assert sentence_encoder().device.type == expected
    monkeypatch.setenv("SYNPRO_GATE_DEVICE", "cpu")
    assert gate_device() == "cpu"
