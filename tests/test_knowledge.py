"""Knowledge micro-benchmark: the corpus, its probes, `synpro prepare --train-tokenizer`, and the
equal token budget of the bench's arms (bench/knowledge.py's own planning code)."""
import importlib.util
import json
import os
import sys

import pytest

from synpro_megatron.eval import knowledge as kn
from synpro_megatron.generators import prompts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench():
    spec = importlib.util.spec_from_file_location("bench_knowledge", os.path.join(ROOT, "bench", "knowledge.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _texts(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("kn")
    return kn.write_benchmark(str(out / "a"), kn.KnowledgeConfig(people=48, seed=3))


def test_corpus_is_deterministic(corpus, tmp_path):
    again = kn.write_benchmark(str(tmp_path / "b"), kn.KnowledgeConfig(people=48, seed=3))
    assert kn.corpus_digest(again) == kn.corpus_digest(corpus)
    other = kn.write_benchmark(str(tmp_path / "c"), kn.KnowledgeConfig(people=48, seed=4))
    assert kn.corpus_digest(other) != kn.corpus_digest(corpus)


def test_split_and_items(corpus):
    people = json.load(open(corpus["people.json"]))
    split = people["split"]
    roles = split["heldout"] + split["reference"] + split["evaluation"]
    assert len(roles) == len(set(roles)) == 48 and split["reference"] and split["evaluation"]
    by_id = {p["id"]: p for p in people["people"]}
    items = [json.loads(line) for line in open(corpus["eval_mc.jsonl"])]
    # evaluation items are the evaluation people's only, one per attribute and probe frame
    assert {it["id"].split(":")[0] for it in items} == set(split["evaluation"])
    assert len(items) == len(split["evaluation"]) * sum(len(f) for f in kn.PROBE_FRAMES.values())
    for it in items:
        pid, attribute, _ = it["id"].split(":")
        assert it["choices"][it["gold"]] == by_id[pid][attribute] and len(set(it["choices"])) == 4
    # the multiple-choice evaluation reads them as it reads the packaged set: one task per attribute
    from synpro_megatron.eval.multiple_choice import load_mc_examples

    examples = load_mc_examples(corpus["eval_mc.jsonl"])
    assert {ex.task for ex in examples} == {f"knowledge_{a}" for a in kn.ATTRIBUTES}
    ref_ids = {line.split('"')[3].split(":")[0] for line in open(corpus["reference.jsonl"])}
    assert ref_ids == set(split["reference"])
    # the oracle covers trained people only; the held-out people's facts appear in no oracle text
    oracle_people = {json.loads(line)["id"].split(":")[0] for line in open(corpus["oracle.jsonl"])}
    assert oracle_people == set(split["reference"]) | set(split["evaluation"])


def _prompt_texts():
    texts = [prompts.SYSTEM_PROMPT, *prompts.INSTRUCTIONS.values(), *prompts.EXAMPLE_ANSWERS.values(),
             *prompts.FOLLOW_UP.values(), *prompts.PREFILLS.values(), prompts.EXAMPLE_SOURCE]
    for kind in prompts.KINDS:
        for few_shot in (False, True):
            texts += [m["content"] for m in prompts.render_messages(kind, "SOURCE", few_shot=few_shot, prefill=True)]
    return texts


def test_no_probe_phrasing_in_training_text_or_prompts(corpus):
    training = _texts(corpus["bios.jsonl"]) + _texts(corpus["oracle.jsonl"])
    # the check itself finds a phrasing when there is one
    probe = json.loads(open(corpus["eval_mc.jsonl"]).readline())["prompt"]
    assert kn.contaminated_fragments(training + [probe])
    assert kn.contaminated_fragments(training) == {}
    assert kn.contaminated_fragments(_prompt_texts()) == {}
    # and no whole probe context (frame + name) occurs in any training document either
    joined = "\n".join(training).lower()
    for line in open(corpus["eval_mc.jsonl"]):
        assert json.loads(line)["prompt"].lower() not in joined
    # held-out rephrasings are unseen too: none equals a training sentence
    sentences = {s.strip() for t in training for s in t.split(".")}
    for t in _texts(corpus["heldout_rephrasings.jsonl"]):
        assert not {s.strip() for s in t.split(".") if s.strip()} & sentences


def test_train_tokenizer_is_deterministic_and_round_trips(corpus, tmp_path):
    from synpro_megatron.data.indexed import read_documents
    from synpro_megatron.data.prepare import load_meta
    from synpro_megatron.data.tokenizer import load_tokenizer

    from synpro_megatron.cli import main

    outs = []
    for name in ("x", "y"):  # the `synpro prepare` entry point, twice
        prefix = str(tmp_path / name / "bios")
        os.makedirs(os.path.dirname(prefix))
        assert main(["prepare", "--input", corpus["bios.jsonl"], "--output", prefix, "--held-out", "0.1",
                     "--train-tokenizer", "400", "--workers", "1"]) == 0
        outs.append(prefix)
    a, b = (open(p + ".tokenizer/tokenizer.json", "rb").read() for p in outs)
    assert a == b
    assert open(outs[0] + ".bin", "rb").read() == open(outs[1] + ".bin", "rb").read()
    meta = load_meta(outs[0])
    # pretraining and inference read the tokenizer from meta.json (pretrain/trainer.py, inference.py)
    assert meta["tokenizer"] == os.path.abspath(outs[0] + ".tokenizer") and meta["vocab_size"] == 400
    tok = load_tokenizer(meta["tokenizer"])
    assert tok.vocab_size == 400 and tok.eod == tok.hf.convert_tokens_to_ids("<|endoftext|>")
    texts = {d["id"]: d["text"] for d in map(json.loads, open(corpus["bios.jsonl"]))}
    ids = json.load(open(outs[0] + ".docids.json"))
    docs = list(read_documents(outs[0]))
    assert len(docs) == len(ids) == meta["num_docs"]
    for doc_id, doc in zip(ids, docs):
        assert doc[-1] == tok.eod and tok.detokenize(doc[:-1].tolist()) == texts[doc_id]
    # text it never saw (a probe phrasing, non-ASCII) still round-trips: byte-level BPE
    probe = "Payslips received by Zoë come from Kraków — 2024"
    assert tok.detokenize(tok.tokenize(probe)) == probe
    # the trained vocabulary is much smaller than the default and packs the corpus tighter per entry
    assert len(tok.tokenize(texts[ids[0]])) < 3 * len(load_tokenizer().tokenize(texts[ids[0]]))


def test_train_tokenizer_rejects_tiny_vocab(corpus, tmp_path, capsys):
    from synpro_megatron.cli import main

    assert main(["prepare", "--input", corpus["bios.jsonl"], "--output", str(tmp_path / "o"),
                 "--train-tokenizer", "100"]) == 2
    assert "--train-tokenizer must be >= 300" in capsys.readouterr().err
    assert not os.path.exists(str(tmp_path / "o.meta.json"))


def test_arms_get_the_same_token_budget(tmp_path):
    """The bench's planning path: the SynPro loop's PretrainConfig (built by the loop controller
    from the bench's loop config) and every branch arm's config derived from it by the bench."""
    from synpro_megatron.loop.config import LoopConfig
    from synpro_megatron.loop.controller import Controller

    bench = _bench()
    cfg = bench.BenchConfig()
    data = {"prefix": str(tmp_path / "bios"), "tokenizer": str(tmp_path / "bios.tokenizer"),
            "train_bios": "t.jsonl", "reference": "r.jsonl", "doc_losses": "d.jsonl", "token_budget": 8192 * 25 + 77}
    path = tmp_path / "loop.json"
    path.write_text(json.dumps(bench.loop_config(data, cfg, seed=0)))
    loop_cfg = LoopConfig.load(str(path))
    synpro_dir = tmp_path / "synpro"
    controller = Controller(loop_cfg, str(synpro_dir))
    pcfg = controller._pretrain_config(stop_at_sample=8, resume=False)
    (synpro_dir / "pretrain_config.json").write_text(pcfg.to_json())
    budgets = {"synpro": bench.arm_token_budget(pcfg)}
    for arm in ("repetition", "prompted", "oracle"):
        synthetic = {} if arm == "repetition" else {"round1_rephrase": f"/x/{arm}"}
        acfg = bench.arm_pretrain_config(str(synpro_dir), str(tmp_path / arm), synthetic,
                                         None if arm == "repetition" else "/x/schedule.json")
        assert acfg.run_dir == str(tmp_path / arm) and acfg.stop_at_sample is None
        budgets[arm] = bench.arm_token_budget(acfg)
    assert set(budgets.values()) == {loop_cfg.total_steps() * loop_cfg.train.global_batch * loop_cfg.seq_length()}
    # the budget is a whole number of global batches: what the loop's total_steps trains
    assert budgets["synpro"] == 8192 * 25
