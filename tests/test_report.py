"""Report builder on a small recorded demo (SynPro + repetition run dirs written here): every number
it prints comes from the logs, every figure is a real image, missing inputs are reported."""
import argparse
import json
import math
import os
import re

from synpro_megatron.eval.cli import register_cli
from synpro_megatron.eval.report import build_report
from synpro_megatron.rundir import RunDir

GB, SEQ = 8, 256  # global batch, sequence length: tokens = step * GB * SEQ
REFRESH_STEP = 80
KINDS = ("rephrase", "reformat")
REWARD_STEPS = 12


def loss(step, synpro, offset=0.0):
    value = 2.2 + 3.0 * math.exp(-step / 35.0) + offset + 0.003 * math.sin(1.3 * step)
    if synpro and step > REFRESH_STEP:
        value -= 0.35 * (1.0 - math.exp(-(step - REFRESH_STEP) / 30.0))
    return round(value, 6)


def write_jsonl(path, records):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def write_metrics(run_dir, synpro, steps=200, every=10):
    recs = []
    for step in range(0, steps + 1, 5):
        tokens = step * GB * SEQ
        if step:
            recs.append({"kind": "train", "step": step, "consumed_samples": step * GB, "tokens": tokens,
                         "lm_loss": loss(step, synpro, -0.05), "lr": 6e-4, "grad_norm": 1.1, "tokens_per_s": 5000.0})
        if step % every == 0:
            recs.append({"kind": "eval", "step": step, "consumed_samples": step * GB, "tokens": tokens,
                         "heldout_loss": loss(step, synpro, 0.05), "reference_loss": loss(step, synpro)})
    write_jsonl(os.path.join(run_dir, "metrics.jsonl"), recs)
    return recs


SOURCES = {
    "c4a-00007": "The county fair opens on Friday with livestock shows, a pie contest and rides for children. "
                 "Tickets cost five dollars at the gate and parking is free on the north lot. " * 3,
    "c4a-00011": "Our bakery uses stone-ground flour from a mill two miles away. Every loaf is shaped by hand "
                 "and baked in a wood-fired oven before sunrise. " * 3,
}


def build_demo(root):
    demo = root / "demo"
    syn, rep = str(demo / "synpro"), str(demo / "repetition")
    syn_recs = write_metrics(syn, synpro=True)
    write_metrics(rep, synpro=False)
    # the organic corpus the synthetic round was made from (the report shows source texts from it)
    corpus = root / "corpus.jsonl"
    write_jsonl(str(corpus), [{"id": i, "text": t} for i, t in SOURCES.items()])
    refresh_sample = REFRESH_STEP * GB
    weights = {"organic": 0.6, "round1_rephrase": 0.2, "round1_reformat": 0.2}
    write_jsonl(os.path.join(syn, "loop_log.jsonl"), [
        {"event": 0, "kind": "plateau", "plateau": False, "step": 40, "round": 0, "action": "continue",
         "reason": "improving: 0 of 2 trailing evaluations flat"},
        {"event": 1, "kind": "plateau", "plateau": True, "step": REFRESH_STEP, "round": 0,
         "action": "refresh: build round 1", "reason": "reference_loss improved by less than 0.01"},
        {"event": 2, "kind": "stage", "stage": "extend_blend", "round": 1, "start_sample": refresh_sample,
         "weights": weights, "next": "pretrain"},
    ])
    with open(os.path.join(syn, "blend_schedule.json"), "w") as f:
        json.dump({"sources": list(weights), "phases": [
            {"start": 0, "weights": {"organic": 1.0}},
            {"start": refresh_sample, "weights": {"organic": 0.9, "round1_rephrase": 0.05, "round1_reformat": 0.05},
             "end_weights": weights, "end": refresh_sample + 400}]}, f)
    with open(os.path.join(syn, "state.json"), "w") as f:
        json.dump({"stage": "done", "round": 1, "rounds_done": 1, "data": "data/organic", "step": 200,
                   "blend_schedule": "blend_schedule.json", "history": []}, f)
    # generator RL logs as `synpro train-generator` writes them (unprefixed keys, wall-clock time,
    # None for a reward that was off at that step), in the generators' one home
    gate_final = {}
    reward_dirs = {kind: RunDir(syn).generator_dir(1, kind) for kind in ("rephrase", "reformat")}
    for n, kind in enumerate(KINDS):
        recs = []
        for step in range(1, REWARD_STEPS + 1):
            q = round(0.30 + 0.03 * step + 0.01 * n, 4)
            gate = round(min(1.0, 0.55 + 0.035 * step - 0.02 * n), 4)
            recs.append({"step": step, "time": 1.7e9 + 30 * step, "faithfulness": round(0.7 + 0.02 * step, 4),
                         "gate_pass_rate": gate, "quality": q, "format": 1.0,
                         "influence": None if step == 1 else round(0.01 * math.sin(step + n), 4),
                         "combined": round(q * gate, 4), "completions": 32})
        gate_final[kind] = recs[-1]["gate_pass_rate"]
        write_jsonl(os.path.join(reward_dirs[kind], "reward_log.jsonl"), recs)
    # a synthetic round as `synpro synthesize` leaves it: .bin/.idx, provenance by index, manifest
    from synpro_megatron.data.indexed import write_indexed_dataset
    from synpro_megatron.data.tokenizer import load_tokenizer

    tok = load_tokenizer()
    manifest = {"version": 1, "rounds": {"1": {}}}
    for kind in KINDS:
        texts = [f"[{kind}] " + SOURCES[sid][:150].upper() + " END-OF-SYNTHETIC-TEXT" for sid in SOURCES]
        token_lists = [tok.tokenize(t) + [tok.eod] for t in texts]
        write_indexed_dataset(os.path.join(syn, "synthetic", "round_1", kind), token_lists, tok.vocab_size)
        write_jsonl(os.path.join(syn, "synthetic", "round_1", f"{kind}.provenance.jsonl"), [
            {"synthetic_index": j, "source_id": sid, "source_index": 3 + j, "tokens": len(token_lists[j]),
             "faithfulness": 0.93, "quality": 0.71 + 0.1 * j, "format": 1.0, "pieces": 1}
            for j, sid in enumerate(SOURCES)])
        manifest["rounds"]["1"][kind] = {
            "prefix": f"synthetic/round_1/{kind}", "documents": len(texts), "dropped": 1, "sources": len(texts) + 1,
            "tokens": sum(map(len, token_lists)), "tokenizer": tok.name, "job": {"source": str(corpus)}}
    with open(os.path.join(syn, "synthetic", "manifest.json"), "w") as f:
        json.dump(manifest, f)
    for run_dir, base in ((syn, 0.30), (rep, 0.27)):
        write_jsonl(os.path.join(run_dir, "eval_mc.jsonl"), [
            {"kind": "eval_mc", "step": s, "tokens": s * GB * SEQ, "macro_acc": base + 0.01 * k,
             "macro_acc_norm": base + 0.02 * k, "num_examples": 30, "length_unit": "tokens",
             "tasks": {"copa": {"acc": 0.5 + 0.1 * k, "acc_norm": 0.6, "n": 10, "num_choices": 2, "chance": 0.5},
                       "arc_easy": {"acc": 0.3125, "acc_norm": 0.35, "n": 20, "num_choices": 4, "chance": 0.25}}}
            for k, s in enumerate((100, 200))])
    return demo, syn_recs, gate_final, manifest


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="synpro")
    register_cli(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def check_png(path):
    import matplotlib.image

    assert os.path.getsize(path) > 15_000, f"{path}: only {os.path.getsize(path)} bytes"
    image = matplotlib.image.imread(path)
    assert image.shape[0] >= 300 and image.shape[1] >= 400, f"{path}: {image.shape}"
    assert image[..., :3].std() > 0.05, f"{path}: (nearly) uniform image"


def test_report_from_recorded_demo(tmp_path, capsys):
    demo, syn_recs, gate_final, manifest = build_demo(tmp_path)
    assert run_cli(["report", str(demo)]) == 0  # a demo dir: synpro vs repetition, report in DEMO/report
    assert "wrote" in capsys.readouterr().out
    report_dir = demo / "report"
    text = (report_dir / "report.md").read_text()

    # the numbers, as the logs have them
    syn_eval = [r for r in syn_recs if r["kind"] == "eval"][-1]
    rep_eval = json.loads((demo / "repetition" / "metrics.jsonl").read_text().splitlines()[-1])
    for value in (syn_eval["reference_loss"], syn_eval["heldout_loss"], rep_eval["reference_loss"],
                  rep_eval["heldout_loss"]):
        assert f"{value:.4f}" in text
    assert f"{200 * GB * SEQ:,}" in text  # final tokens
    assert re.search(r"\| synthetic rounds blended in \| 1 \|", text)
    assert re.search(r"\| synthetic documents \| 4 \|", text)  # 2 + 2, from the manifest
    rephrase = manifest["rounds"]["1"]["rephrase"]
    assert f"| 1 | rephrase | 2 | 3 | 1 | 0.6667 | {rephrase['tokens']:,} |" in text
    assert f"{sum(gate_final.values()) / 2:.4f}" in text  # final gate pass rate, mean over generators
    assert "0.3100 / 0.3200" in text and "0.2800 / 0.2900" in text  # MC macro acc of the last records
    assert f"{REFRESH_STEP * GB * SEQ:,}" in text  # the refresh point, in tokens
    diff = syn_eval["reference_loss"] - rep_eval["reference_loss"]
    assert f"{diff:+.4f}" in text
    # the example triple: truncated source, both synthetic texts, their rewards
    assert "c4a-00007" in text and "The county fair opens on Friday" in text
    assert "[rephrase] THE COUNTY FAIR" in text and "[reformat] THE COUNTY FAIR" in text and "…" in text
    assert "faithfulness 0.930, quality 0.710, format 1.000" in text and "quality 0.810" in text
    assert "Not available" not in text and "Could not build" not in text

    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert set(figures) == {"loss_curves.png", "blend_mix.png", "rl_rewards.png", "mc_accuracy.png"}
    for name in figures:
        check_png(str(report_dir / name))
    assert not [p for p in os.listdir(report_dir) if ".tmp" in p]  # atomic writes leave nothing behind


def test_report_with_missing_and_broken_inputs(tmp_path):
    run = tmp_path / "rep_only"
    recs = write_metrics(str(run), synpro=False)
    # a reward log with a malformed line in the middle: that section says so, the rest is written
    reward_log = os.path.join(RunDir(str(run)).generator_dir(1, "rephrase"), "reward_log.jsonl")
    write_jsonl(reward_log, [{"step": 1, "gate_pass_rate": 0.5}])
    with open(reward_log, "a") as f:
        f.write("{not json\n" + json.dumps({"step": 2, "gate_pass_rate": 0.6}) + "\n")
    # a synthetic dataset with neither manifest nor provenance: counts come from its .idx header
    from synpro_megatron.data.indexed import write_indexed_dataset

    write_indexed_dataset(str(run / "synthetic" / "round_1" / "rephrase"), [[1] * 5, [2] * 7, [3] * 9], vocab_size=100)
    out = build_report(str(run))
    text = open(out["report"]).read()
    assert out["report"] == str(run / "report" / "report.md")
    assert "| 1 | rephrase | 3 | — | — | — | 21 |" in text and "No provenance records; no examples." in text
    final = [r for r in recs if r["kind"] == "eval"][-1]
    assert f"{final['reference_loss']:.4f}" in text
    assert out["sections"]["Blend mix"] == "missing" and "_Not available: no blend schedule" in text
    assert out["sections"]["Generator RL"] == "error" and "reward_log.jsonl:2: malformed JSON" in text
    assert out["sections"]["Multiple-choice evaluation"] == "missing"
    assert "No plateau or refresh events" in text
    assert out["plots"] == [str(run / "report" / "loss_curves.png")]
    check_png(out["plots"][0])

    # an empty directory still gets a report that says what is missing
    empty = tmp_path / "empty"
    empty.mkdir()
    out = build_report(str(empty))
    assert all(s == "missing" for s in out["sections"].values()) and "no eval records" in open(out["report"]).read()


def test_rebuild_drops_figures_whose_inputs_are_gone(tmp_path):
    run = tmp_path / "run"
    write_metrics(str(run), synpro=True)
    write_jsonl(str(run / "eval_mc.jsonl"), [
        {"step": s, "tokens": s * GB * SEQ, "macro_acc": 0.3, "macro_acc_norm": 0.31,
         "tasks": {"copa": {"acc": 0.3, "acc_norm": 0.31, "n": 10, "num_choices": 2, "chance": 0.5}}}
        for s in (100, 200)])
    assert os.path.exists(build_report(str(run))["plots"][-1])
    os.remove(run / "eval_mc.jsonl")
    out = build_report(str(run))
    assert not os.path.exists(run / "report" / "mc_accuracy.png")
    assert out["sections"]["Multiple-choice evaluation"] == "missing"
