"""InfluenceProbe on a real tiny checkpoint: accuracy of the projection, the first-order model
against an actual SGD step, and independence from the TP/PP layout the checkpoint is loaded at."""
import gzip
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from synpro_megatron.data.prepare import PrepareConfig, prepare
from synpro_megatron.pretrain.data import DEFAULT_WEB_SAMPLE

pytestmark = pytest.mark.slow

SHAPE = ["--config", "tiny", "--num-layers", "4", "--hidden-size", "64", "--num-attention-heads", "4",
         "--ffn-hidden-size", "192", "--seq-len", "64"]


def web_texts(start, n):
    with gzip.open(DEFAULT_WEB_SAMPLE, "rt", encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in f]
    return docs[start:start + n]


def short_texts(start, n):
    """Web texts cut to a few dozen tokens of different lengths, as GRPO completions are."""
    return [t[:90 + 45 * i] for i, t in enumerate(web_texts(start, n))]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("influence")
    corpus = root / "organic"
    prepare(PrepareConfig(input=DEFAULT_WEB_SAMPLE, output=str(corpus), limit=300, held_out=0.1, workers=1))
    run_dir = root / "run"
    cmd = [sys.executable, "-m", "synpro_megatron.cli", "pretrain", "--data", str(corpus), "--run-dir", str(run_dir),
           *SHAPE, "--micro-batch", "2", "--global-batch", "4", "--max-steps", "6", "--lr", "1e-2",
           "--lr-warmup-steps", "1", "--eval-interval", "0", "--save-interval", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return str(run_dir / "checkpoints" / "iter_0000006")


@pytest.fixture(scope="module")
def probes(checkpoint):
    from synpro_megatron.influence.probe import InfluenceProbe

    exact = InfluenceProbe(checkpoint, max_ref_docs=24, mode="exact", lr=1e-3, cache=False)
    projected = InfluenceProbe(checkpoint, max_ref_docs=24, lr=1e-3)
    yield exact, projected
    exact.close()
    projected.close()


def pearson(a, b):
    return torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1].item()


def test_projected_score_tracks_exact_first_order_score(probes):
    exact, projected = probes
    texts = web_texts(0, 24)
    s_exact, s_proj = exact.score(texts), projected.score(texts)
    assert s_exact.std() > 0
    assert pearson(s_proj, s_exact) >= 0.9
    # rank-k truncation of G_ref keeps most of each score, not just its ordering
    assert torch.allclose(s_proj, s_exact, rtol=0.25, atol=0.05 * s_exact.abs().max().item())


def _reference_loss(probe):
    return probe.reference_loss()


def test_exact_score_predicts_one_sgd_step(probes):
    """score(x) = lr<g_x, g_ref> against the measured drop of the reference loss after one SGD step
    of size lr on x, over the weights the score covers (every hooked linear layer)."""
    exact, _ = probes
    texts = web_texts(100, 16)
    predicted = exact.score(texts)
    weights = [layer.module.weight for _, layer in exact._layers()]
    base = _reference_loss(exact)
    actual = []
    for text in texts:
        saved = [w.detach().clone() for w in weights]
        exact._zero_param_grads()
        exact.backward_texts([text])
        with torch.no_grad():
            for w in weights:
                w -= exact.lr * w.grad
        actual.append(base - _reference_loss(exact))
        with torch.no_grad():
            for w, s in zip(weights, saved):
                w.copy_(s)
    exact._zero_param_grads()
    actual = torch.tensor(actual, dtype=torch.float64)
    assert pearson(predicted, actual) >= 0.95
    assert (predicted.sum() / actual.sum()).item() == pytest.approx(1.0, abs=0.2)


def test_reward_is_output_minus_source_and_reference_is_cached(probes, checkpoint):
    from synpro_megatron.influence.probe import InfluenceProbe

    _, projected = probes
    out, src = web_texts(200, 3), web_texts(300, 3)
    reward = projected.reward(out, src)
    assert torch.allclose(reward, projected.score(out) - projected.score(src))
    cached = os.listdir(os.path.join(checkpoint, "influence"))
    assert len(cached) == 1 and cached[0].endswith(".pt")
    again = InfluenceProbe(checkpoint, max_ref_docs=24, lr=1e-3)
    assert torch.allclose(again.score(out), projected.score(out), rtol=1e-5)
    again.close()
    assert projected.score([""]).item() == 0.0


LAYOUT_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from synpro_megatron.cli import quiet_optional_dependency_warnings
    quiet_optional_dependency_warnings()
    from synpro_megatron.influence.probe import InfluenceProbe
    ckpt, tp, pp, out, texts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5])
    result = {}
    for name, kw in {"reference": {}, "random": {"projection": "random"}, "exact": {"mode": "exact"}}.items():
        if name == "exact" and tp > 1:
            kw["mode"] = "exact"
        probe = InfluenceProbe(ckpt, max_ref_docs=12, lr=1e-3, tp=tp, pp=pp, cache=False, **kw)
        assert probe.packing
        result[name] = probe.score(texts).tolist()
        if name == "reference":  # the old layout: one text per row, padded
            probe.packing = False
            result["reference_rows"] = probe.score(texts).tolist()
        probe.close()
    if torch.distributed.get_rank() == 0:
        json.dump(result, open(out, "w"))
""")


def test_scores_do_not_depend_on_the_parallel_layout(checkpoint, tmp_path):
    script = tmp_path / "score.py"
    script.write_text(LAYOUT_SCRIPT)
    texts = json.dumps(short_texts(400, 6))  # several per packed row
    results = {}
    for tp, pp in ((1, 1), (2, 1), (1, 2)):
        out = tmp_path / f"tp{tp}pp{pp}.json"
        launcher = [sys.executable] if tp * pp == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                          "--standalone", f"--nproc-per-node={tp * pp}"]
        proc = subprocess.run([*launcher, str(script), checkpoint, str(tp), str(pp), str(out), texts],
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]
        results[(tp, pp)] = json.load(open(out))
    base = results[(1, 1)]
    for layout, res in results.items():  # packed == one text per row, at every layout
        a, b = torch.tensor(res["reference"]), torch.tensor(res["reference_rows"])
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item()), (layout, a, b)
    for layout, res in results.items():
        for kind in ("reference", "random", "exact"):
            a, b = torch.tensor(res[kind]), torch.tensor(base[kind])
            assert torch.allclose(a, b, rtol=1e-3, atol=1e-4 * b.abs().max().item()), (layout, kind, a, b)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    from synpro_megatron.influence.probe import InfluenceProbe

    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        InfluenceProbe(str(tmp_path / "nope"))


def test_probe_cli_writes_factors_and_document_losses(checkpoint, tmp_path):
    from synpro_megatron.rundir import RunDir

    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "synpro_megatron.cli", "probe", "--checkpoint", checkpoint,
                           "--run-dir", str(run_dir), "--round", "2", "--max-ref-docs", "8", "--doc-losses",
                           "--doc-limit", "10"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    probe_dir = RunDir(str(run_dir)).probe_dir(2)  # the run-directory contract: RUN_DIR/rounds/round_2/probe
    summary = json.load(open(os.path.join(probe_dir, "probe.json")))
    assert summary["step"] == 6 and os.path.exists(summary["factors"])
    factors = torch.load(summary["factors"])
    assert set(factors) == set(summary["layers"]) and "output_layer" in factors
    rows = [json.loads(line) for line in open(os.path.join(probe_dir, "doc_losses.jsonl"))]
    ids = json.load(open(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(checkpoint))),
                                      "organic.docids.json")))
    assert [r["id"] for r in rows] == ids[:10]
    assert all(0 < r["loss"] < 20 and r["tokens"] > 0 for r in rows)

    bad = subprocess.run([sys.executable, "-m", "synpro_megatron.cli", "probe", "--checkpoint",
                          str(tmp_path / "missing"), "--run-dir", str(run_dir)], capture_output=True, text=True)
    assert bad.returncode == 2 and "checkpoint not found" in bad.stderr


def test_packed_scoring_runs_on_the_kernel_and_equals_one_text_per_row(probes):
    """Same texts, same checkpoint: packed rows (document-block attention, per-document positions,
    cu_seqlens) score like one text per row, and the packed path calls the Triton kernel (here under
    the interpreter) once per hooked layer and backward."""
    from synpro_megatron import kernels

    _, projected = probes
    texts = [t[:50 + 12 * i] for i, t in enumerate(web_texts(500, 6))]
    rows = projected._rows(projected._tokenize(texts))
    assert len(rows) <= 3 and max(len(r) for r in rows) >= 2  # several texts share a row
    backwards = -(-len(rows) // projected.batch_size)
    packed = projected.score(texts)
    projected.packing = False
    try:
        one_per_row = projected.score(texts)
    finally:
        projected.packing = True
    assert torch.allclose(packed, one_per_row, rtol=1e-4, atol=1e-6 * one_per_row.abs().max().item())
    projected.capture.backend = "triton"
    try:
        before = dict(kernels.CALLS)
        on_kernel = projected.score(texts)
    finally:
        projected.capture.backend = "auto"
    assert kernels.CALLS["triton"] - before["triton"] == backwards * len(projected.capture.layer_names)
    assert kernels.CALLS["reference"] == before["reference"]
    assert torch.allclose(on_kernel, packed, rtol=1e-4, atol=1e-6 * packed.abs().max().item())


def test_default_lr_is_the_checkpoints_scheduled_lr(checkpoint):
    """The score's step size is the lr the trainer used right after the checkpoint, not the peak lr."""
    from synpro_megatron.influence.optimizer_state import checkpoint_lr
    from synpro_megatron.pretrain.inference import run_config_for_checkpoint

    run_dir = os.path.dirname(os.path.dirname(checkpoint))
    logged = {r["step"]: r["lr"] for r in map(json.loads, open(os.path.join(run_dir, "metrics.jsonl")))
              if r.get("kind") == "train"}
    cfg = run_config_for_checkpoint(checkpoint)
    for step in (1, 3, 6):  # the trainer logs the lr after its scheduler step
        assert checkpoint_lr(cfg, step) == pytest.approx(logged[step], rel=1e-9)
    assert len({round(v, 12) for v in logged.values()}) > 2 and logged[6] < cfg.lr


def test_adam_score_predicts_one_preconditioned_step(checkpoint):
    """optimizer="adam": score(x) = lr<g_x * P, g_ref> with P = 1/(sqrt(v̂)+eps) from the checkpoint's
    Adam state, against the measured drop of the reference loss after the step w -= lr * P * g_x (the
    step Adam takes on x, up to its momentum), and clearly different from the plain SGD score."""
    from synpro_megatron.influence.optimizer_state import adam_preconditioners
    from synpro_megatron.influence.probe import InfluenceProbe

    adam = InfluenceProbe(checkpoint, max_ref_docs=24, mode="exact", lr=1e-6, cache=False, optimizer="adam")
    try:
        texts = web_texts(200, 12)
        predicted = adam.score(texts)
        layers = adam._layers()
        precond = adam_preconditioners(checkpoint, [n for n, _ in layers], adam.tokenizer.vocab_size)
        weights = [(layer.module.weight, precond[name]) for name, layer in layers]
        base = _reference_loss(adam)
        actual = []
        for text in texts:
            saved = [w.detach().clone() for w, _ in weights]
            adam._zero_param_grads()
            adam.backward_texts([text])
            with torch.no_grad():
                for w, p in weights:
                    w -= adam.lr * p.to(w.dtype) * w.grad
            actual.append(base - _reference_loss(adam))
            with torch.no_grad():
                for (w, _), s in zip(weights, saved):
                    w.copy_(s)
        adam._zero_param_grads()
    finally:
        adam.close()
    actual = torch.tensor(actual, dtype=torch.float64)
    assert predicted.std() > 0 and pearson(predicted, actual) >= 0.95
    assert (predicted.sum() / actual.sum()).item() == pytest.approx(1.0, abs=0.25)
    sgd = InfluenceProbe(checkpoint, max_ref_docs=24, mode="exact", lr=1e-6, cache=False)
    try:
        assert pearson(sgd.score(texts), predicted) < 0.999  # the preconditioner changes the score
    finally:
        sgd.close()
