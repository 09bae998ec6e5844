"""The trained faithfulness verifier: weakly supervised pairs, deterministic training through
`synpro train-verifier`, and `rewards.faithfulness` using the cached verifier by default."""
import json

import pytest

from synpro_megatron.cli import main as synpro_main
from synpro_megatron.rewards import FaithfulnessConfig, faithfulness
from synpro_megatron.rewards.verifier import (LABELS, VerifierRecipe, Verifier, build_pairs, default_verifier_dir,
                                              is_held_out, read_corpus)
from synpro_megatron.rewards import verifier as verifier_mod

TINY = ["--max-docs", "4", "--epochs", "1", "--sentences-per-doc", "1", "--max-length", "64", "--seed", "3"]


def test_pairs_cover_every_label_and_are_split_by_document():
    docs = [d for d in read_corpus(VerifierRecipe().corpus) if not is_held_out(d["id"])][:6]
    pairs = build_pairs(docs, seed=0, sentences_per_doc=1, log=lambda m: None)
    assert {p.label for p in pairs} == set(LABELS)
    assert {p.doc_id for p in pairs} <= {d["id"] for d in docs}
    assert any(p.label == "Unfaithful_Content" and p.hypothesis != p.premise for p in pairs)
    again = build_pairs(docs, seed=0, sentences_per_doc=1, log=lambda m: None)
    assert [(p.premise, p.hypothesis, p.label) for p in pairs] == [(p.premise, p.hypothesis, p.label) for p in again]


@pytest.mark.slow
def test_train_verifier_is_deterministic_and_is_the_default_gate(tmp_path, monkeypatch):
    """`synpro train-verifier` and the gate's `--verifier train` build the same model from the same
    recipe; the built default is then what rewards.faithfulness uses (once it has learned)."""
    import torch

    a = tmp_path / "a"
    assert synpro_main(["train-verifier", "--output", str(a), *TINY]) == 0
    labels, p_faithful = Verifier(str(a)).label_units("The bridge opened in 1932. It is 503 metres long.",
                                                      ["The bridge, 503 metres long, opened in 1932."])
    assert labels[0] in LABELS and 0.0 <= p_faithful[0] <= 1.0
    # a unit longer than max_length (64 tokens here) is trimmed, not an error (it once stopped training)
    long_unit = "The bridge, which is 503 metres long, opened in 1932 " + "and carries two railway lines " * 20
    labels, _ = Verifier(str(a)).label_units("The bridge opened in 1932. It is 503 metres long.", [long_unit])
    assert labels[0] in LABELS

    # --verifier train: the gate builds the default verifier when the cache lacks it (the real
    # training, on TINY's recipe so that it takes seconds), once; auto never builds one
    monkeypatch.setenv("SYNPRO_CACHE", str(tmp_path / "cache"))
    real_train, built = verifier_mod.train_verifier, []

    def tiny_recipe(recipe=None, out_dir=None, log=print):
        built.append(out_dir)
        return real_train(VerifierRecipe(max_docs=4, epochs=1, sentences_per_doc=1, max_length=64, seed=3), out_dir, log)

    monkeypatch.setattr(verifier_mod, "train_verifier", tiny_recipe)
    source = "The bridge opened in 1932. It is 503 metres long and carries two railway lines."
    rewrite = "Opened in 1932, the bridge is 503 metres long and carries two lines of railway."
    assert "verifier_labels" not in faithfulness(source, rewrite).details and not built
    first = faithfulness(source, rewrite, config=FaithfulnessConfig(verifier="train"))
    default = default_verifier_dir()
    assert "verifier_labels" in first.details and built == [default]
    again = faithfulness(source, rewrite, config=FaithfulnessConfig(verifier="train"))
    assert again.details["verifier_labels"] == first.details["verifier_labels"] and len(built) == 1
    # deterministic: the CLI's model and the gate's are the same weights
    sa, sb = Verifier(str(a)).model.state_dict(), Verifier(str(default)).model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)

    meta = json.loads((default / "synpro_verifier.json").read_text())
    held = meta["heldout"]  # measured on pairs from held-out documents when it was trained
    assert held["pairs"] > 0 and 0.0 <= held["balanced_accuracy"] <= 1.0
    # a verifier that has not learned the task (this 4-document one) does not gate by default
    if held["balanced_accuracy"] < verifier_mod.MIN_HELDOUT_BALANCED_ACCURACY:
        assert "verifier_labels" not in faithfulness(source, rewrite).details
    monkeypatch.setattr(verifier_mod, "MIN_HELDOUT_BALANCED_ACCURACY", 0.0)
    verifier_mod._trusted.cache_clear()
    assert "verifier_labels" in faithfulness(source, rewrite).details
    assert "verifier_labels" not in faithfulness(source, rewrite, config=FaithfulnessConfig(verifier="off")).details
    # the verifier's labels scale the score; they fail the gate only with verifier_rejects
    forced = FaithfulnessConfig(verifier_threshold=1.01)  # every unit falls below it: labelled unfaithful
    soft = faithfulness(source, rewrite, config=forced)
    assert soft.passed and "Faithful" not in soft.details["verifier_labels"]
    hard = faithfulness(source, rewrite, config=FaithfulnessConfig(verifier_threshold=1.01, verifier_rejects=True))
    assert not hard.passed and any(r.startswith("verifier: ") for r in hard.reasons)


def test_a_wrong_topic_shares_no_word_with_its_content():
    """The Unfaithful_Topic pairs (and the bench's wrong topics) take a noun phrase of another sentence
    that shares no word with the content: "Kiosk Mode" over 'Exit Kiosk" option' or "Your sentences"
    over "the sentence" would be weak topics, not wrong ones (both were drawn as wrong before)."""
    import random
    import re

    from synpro_megatron.rewards.edits import topics

    def forms(text):
        return {w.rstrip("s") for w in re.findall(r"[a-z0-9]+", text.lower())}

    cases = [('When you hit the "Require Passcode to Exit Kiosk" option, this screen will pop up.',
              ["This setting ensures that the app remains in Kiosk Mode during the event."]),
             ("How would these terms make the meaning of the sentence any clearer?",
              ["'In terms of' confuses, rather than clarifies, your sentences and their meaning."]),
             ("Fuji TV also announced that fighters cannot appear on any Fuji TV program.",
              ["DSE President Nobuyuki Sakakibara spoke with the press this week."])]
    drawn = []
    for content, others in cases:
        for seed in range(8):
            right, wrong = topics(content, others, random.Random(seed))
            assert right and forms(right) <= forms(content)
            if wrong:
                assert not forms(wrong) & forms(content), (wrong, content)
                drawn.append(wrong)
    assert drawn, "a topic from a sentence sharing no word must still be drawn"
