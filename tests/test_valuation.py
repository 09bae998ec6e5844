"""Always-on data valuation (`synpro pretrain --value-documents`): same training, scores stored once
per (document, step) across a kill and resume, and `--select valuation:...` reading them."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from synpro_megatron.influence.valuation_store import COLUMNS, ScoreWriter, load_scores

SHAPE = ["--config", "tiny", "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
         "--ffn-hidden-size", "64", "--seq-len", "32"]


def _pretrain_cmd(corpus, run_dir, *extra):
    return [sys.executable, "-m", "synpro_megatron.cli", "pretrain", "--data", str(corpus), "--run-dir", str(run_dir),
            *SHAPE, "--micro-batch", "2", "--global-batch", "4", "--max-steps", "6", "--lr", "1e-2",
            "--lr-warmup-steps", "1", "--eval-interval", "2", "--eval-iters", "1", "--save-interval", "3", *extra]


def _train_losses(run_dir):
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    return {r["step"]: r["lm_loss"] for r in rows if r.get("kind") == "train"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from synpro_megatron.data.prepare import PrepareConfig, prepare
    from synpro_megatron.pretrain.data import DEFAULT_WEB_SAMPLE

    root = tmp_path_factory.mktemp("valuation")
    corpus = root / "organic"
    prepare(PrepareConfig(input=DEFAULT_WEB_SAMPLE, output=str(corpus), limit=120, held_out=0.1, workers=1))
    off, on = root / "off", root / "on"
    plain = subprocess.Popen(_pretrain_cmd(corpus, off, "--save-interval", "0"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # The valued run is killed once the chunk of step 4 is on disk (the last checkpoint is step 3),
    # i.e. with scores past the checkpoint that the resumed run will compute again.
    valued = subprocess.Popen(_pretrain_cmd(corpus, on, "--value-documents"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    chunk4 = on / "valuation" / "scores-r000-00000004-00000004.npz"
    deadline = time.time() + 600
    while not chunk4.exists() and valued.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    # the whole process group, as a node failure or `scancel -s KILL` would: the checkpoint writer's
    # helper process ignores SIGTERM by design and would otherwise outlive the test
    os.killpg(valued.pid, signal.SIGKILL)
    valued.wait()
    assert chunk4.exists(), "the valued run ended before its step-4 chunk was written"
    killed_steps = set(load_scores(str(on))["step"].tolist())
    latest = int(open(on / "checkpoints" / "latest").read())
    resumed = subprocess.run(_pretrain_cmd(corpus, on, "--value-documents", "--resume"),
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, err = plain.communicate(timeout=900)
    assert plain.returncode == 0, err[-3000:]
    return {"corpus": corpus, "off": str(off), "on": str(on), "killed_steps": killed_steps, "killed_at": latest}


@pytest.mark.slow
def test_valuation_leaves_training_unchanged_and_scores_each_document_step_once(runs):
    assert runs["killed_at"] == 3 and max(runs["killed_steps"]) >= 4  # rows past the checkpoint existed
    off, on = _train_losses(runs["off"]), _train_losses(runs["on"])
    assert sorted(off) == list(range(1, 7)) and sorted(on) == sorted(off)
    for step in off:  # the hooks only read activations and gradients
        assert on[step] == pytest.approx(off[step], rel=1e-6, abs=1e-7), step

    cols = load_scores(runs["on"])
    assert set(cols) == set(COLUMNS)
    keys = list(zip(cols["source"].tolist(), cols["doc_id"].tolist(), cols["step"].tolist()))
    assert len(keys) == len(set(keys))  # each (document, step) exactly once after kill + resume
    assert set(cols["step"].tolist()) == set(range(1, 7))
    # The stored document losses are the step's loss: token-weighted they give metrics' lm_loss.
    for step in range(1, 7):
        m = cols["step"] == step
        tok = cols["tokens"][m].astype(np.float64)
        assert (tok * cols["loss"][m]).sum() / tok.sum() == pytest.approx(on[step], rel=1e-5)
        assert tok.sum() == 4 * 32  # every loss token of the global batch belongs to one document
    # lr is 0 in step 1 (warm-up from 0): no influence; later steps score against real factors
    assert np.all(cols["influence"][cols["step"] == 1] == 0)
    assert np.any(cols["influence"][cols["step"] > 1] != 0)


@pytest.mark.slow
def test_select_valuation_not_absorbed_picks_what_the_scores_say(runs):
    from synpro_megatron.influence.valuation import select_source_documents, summarize

    s = summarize(runs["on"])
    organic = s["source"] == 0
    k = max(1, round(0.3 * int(organic.sum())))
    cand = [i for i in np.nonzero(organic & (s["mean_influence"] > 0))[0]]
    want = sorted(cand, key=lambda i: (-s["last_loss"][i], -s["loss_trend"][i], s["doc_id"][i]))[:k]
    ids = json.load(open(str(runs["corpus"]) + ".docids.json"))

    class Doc:  # what synthesize's pool holds: an id per document
        def __init__(self, doc_id):
            self.doc_id = doc_id

    pool = [Doc(i) for i in ids]
    picked = select_source_documents(pool, "valuation:not-absorbed:0.3", runs["on"])
    assert sorted(d.doc_id for d in picked) == sorted(ids[int(s["doc_id"][i])] for i in want)
    assert 0 < len(picked) <= k
    with pytest.raises(ValueError, match="not-absorbed:FRACTION"):
        select_source_documents(pool, "valuation:absorbed:0.3", runs["on"])


def test_score_store_truncates_on_resume(tmp_path):
    """Rows of steps after the resume checkpoint go (deleted or rewritten atomically), a torn
    temporary chunk is ignored, and the rest stays."""
    w = ScoreWriter(str(tmp_path), 0, ["organic"], 0, True, {"organic": "x"})
    for step in range(1, 6):
        w.append({"doc_id": [step, 100 + step], "source": [0, 0], "step": [step, step], "tokens": [3, 4],
                  "loss": [1.0, 2.0], "influence": [0.5, -0.5]})
        if step in (2, 5):
            w.flush()  # chunks [1-2] and [3-5]
    (tmp_path / "valuation" / "scores-r000-00000006-00000006.npz.tmp-1").write_bytes(b"torn")
    ScoreWriter(str(tmp_path), 0, ["organic"], 3, True, {"organic": "x"})  # resume from step 3
    cols = load_scores(str(tmp_path))
    assert cols["step"].tolist() == [1, 1, 2, 2, 3, 3]
    names = sorted(os.listdir(tmp_path / "valuation"))
    assert names == ["scores-r000-00000001-00000002.npz", "scores-r000-00000003-00000003.npz", "sources.json"]
