"""The real loop under test: `synpro run` through the real stage commands at micro scale.

prepare -> pretrain to a plateau -> probe -> one GRPO step per kind -> synthesis -> extended blend
-> resumed pretraining, with no fake runner (CliRunner starts every `synpro` command as a child
process). The second test reruns the loop from a crash image taken inside synthesis and must reach
the same final state.

The crash image: while the uninterrupted run is inside `synthesize:reformat` with part of its journal
written, its whole process group (controller and stage) is frozen with SIGSTOP, the run directory and
log are copied, and the run continues. On disk that copy is exactly what SIGKILL at that instant
leaves behind, and it saves rerunning everything before synthesis (half of this file's time).
"""
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from synpro_megatron.fsutil import read_json, read_jsonl
from synpro_megatron.rundir import RunDir, source_name
from synpro_megatron.synthesis.sources import PACKAGED_SAMPLE

pytestmark = pytest.mark.slow

KINDS = ("rephrase", "reformat")
GLOBAL_BATCH, SEQ = 4, 64
PLATEAU_STEP = 4  # the first plateau check (see config): the round is blended in from sample 16
SYNTH_LIMIT = 4  # documents each synthesis stage rewrites
IMAGED_KIND = "reformat"  # the crash image is taken inside the last synthesis stage: the rerun is short


def _short(text: str, limit: int = 320) -> str:
    """The first sentences of a document, at most `limit` characters: one piece for the generator."""
    cut = text[:limit]
    end = max(cut.rfind(". "), cut.rfind(".\n"))
    return cut[:end + 1] if end > 80 else cut


def write_corpus(path: str, n_docs: int = 80) -> None:
    """Our own corpus: ids no packaged document has, so a prompt or provenance id shows its origin."""
    with gzip.open(PACKAGED_SAMPLE, "rt", encoding="utf-8") as f, open(path, "w", encoding="utf-8") as out:
        for i, line in enumerate(f):
            if i == n_docs:
                break
            doc = json.loads(line)
            out.write(json.dumps({"id": f"e2e-{i:03d}", "text": _short(doc["text"])}) + "\n")


def loop_config(corpus: str) -> dict:
    return {
        "model": "tiny",
        "input": corpus,
        "held_out": 0.25,
        "token_budget": 8 * GLOBAL_BATCH * SEQ,  # 8 steps
        "max_rounds": 1,
        "seed": 7,
        "train": {"micro_batch": 2, "global_batch": GLOBAL_BATCH, "seq_length": SEQ, "lr": 2e-3,
                  "eval_interval": 2, "save_interval": 4, "chunk_evals": 2},
        # any improvement counts as flat: the first check (step 4, two evaluations) is a plateau
        "plateau": {"window": 1, "patience": 1, "rel_threshold": 10.0, "min_steps_after_refresh": 0},
        "generators": {
            "kinds": list(KINDS),
            "train_args": ["--steps", "1", "--num-prompts", "2", "--num-generations", "2", "--max-source-tokens", "48",
                           "--max-completion-length", "24"],
            # generation is most of this file's time: few documents
            "synth_args": ["--limit", str(SYNTH_LIMIT), "--batch-size", "2", "--max-new-tokens", "112", "--max-source-tokens",
                           "96", "--temperature", "0.5", "--candidates", "2", "--repetition-penalty", "1.0",
                           "--few-shot"],
        },
        "blend": {"organic": 0.5, "new_round": {"rephrase": 0.25, "reformat": 0.25}, "earlier_rounds": 0.0},
    }


def synpro_run(cfg_path: str, run_dir: str, log_path: str) -> subprocess.Popen:
    env = dict(os.environ, SYNPRO_FSYNC="0", PYTHONUNBUFFERED="1")
    log = open(log_path, "ab")
    return subprocess.Popen([sys.executable, "-m", "synpro_megatron.cli", "run", "--config", cfg_path,
                             "--run-dir", run_dir], stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def finish(proc: subprocess.Popen, log_path: str, timeout: float = 1500) -> None:
    rc = proc.wait(timeout=timeout)
    with open(log_path, errors="replace") as f:
        assert rc == 0, f.read()[-6000:]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    corpus = str(tmp / "corpus.jsonl")
    write_corpus(corpus)
    cfg_path = str(tmp / "loop.json")
    with open(cfg_path, "w") as f:
        json.dump(loop_config(corpus), f)
    return tmp, cfg_path


@pytest.fixture(scope="module")
def reference(setup):
    """One uninterrupted `synpro run`, and a crash image of it taken inside synthesis (tmp/crash)."""
    tmp, cfg_path = setup
    run_dir, log = str(tmp / "run"), str(tmp / "run.log")
    proc = synpro_run(cfg_path, run_dir, log)
    journal = os.path.join(RunDir(run_dir).synthesis_work_dir(1, IMAGED_KIND), "journal.rank0.jsonl")
    deadline = time.time() + 1500
    while proc.poll() is None and time.time() < deadline:
        if os.path.exists(journal) and os.path.getsize(journal) > 0:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the loop ended before synthesis could be imaged"
    os.killpg(proc.pid, signal.SIGSTOP)  # controller and synthesis frozen: the files are a crash image
    try:
        shutil.copytree(run_dir, str(tmp / "crash" / "run"), symlinks=True)
        shutil.copyfile(log, str(tmp / "crash" / "run.log"))
    finally:
        os.killpg(proc.pid, signal.SIGCONT)
    finish(proc, log)
    return RunDir(run_dir), log


def final_state(run: RunDir) -> dict:
    """What must not depend on a crash along the way."""
    st = read_json(run.state)
    log = [{k: v for k, v in r.items() if k not in ("time", "loss", "smoothed", "smoothed_before",
                                                    "rel_improvement", "epoch_caps", "weights")}
           for r in read_jsonl(run.loop_log)]
    schedule = read_json(run.blend_schedule(1))
    return {"stage": st["stage"], "step": st["step"], "rounds_done": st["rounds_done"],
            "refresh_sample": st["refresh_sample"], "blend_schedule": st["blend_schedule"],
            "synthetic": st["synthetic"], "log": log,
            "phases": [(p["start"], sorted(p["weights"])) for p in schedule["phases"]],
            "latest": run.latest_step(),
            "train_steps": sorted({r["step"] for r in read_jsonl(run.metrics) if r["kind"] == "train"})}


def test_real_loop_end_to_end(reference):
    run, log = reference
    st = read_json(run.state)
    assert st["stage"] == "done" and st["rounds_done"] == 1 and st["step"] == 8
    train_ids = set(read_json(run.organic_prefix + ".docids.json"))
    held_ids = set(read_json(run.heldout_prefix + ".docids.json"))
    assert train_ids and held_ids and all(i.startswith("e2e-") for i in train_ids | held_ids)

    # GRPO trained on the run's own organic pool: never held-out documents, never the packaged sample
    for kind in KINDS:
        meta = read_json(os.path.join(run.generator_dir(1, kind), "synpro_generator.json"))
        assert meta["prompt_sources"].startswith("run:"), meta["prompt_sources"]
        assert meta["prompt_doc_ids"] and set(meta["prompt_doc_ids"]) <= train_ids
    with open(log, errors="replace") as f:
        text = f.read()
    assert "sources: the run's organic pool" in text and "packaged web sample" not in text

    # every synthetic document's provenance maps to a training document of this run
    blended = []
    for kind in KINDS:
        prov = read_jsonl(run.provenance(1, kind))
        assert {p["source_id"] for p in prov} <= train_ids
        assert len({p["source_id"] for p in prov}) == len(prov)
        if prov:
            blended.append(source_name(1, kind))
    assert blended, "no synthetic document passed the gate in either kind"

    # `synpro synthesize` scored each batch beside the next one's generation (the job's scoring
    # thread): batch 0's scoring started before batch 1's generation ended
    for kind in KINDS:
        journal = os.path.join(run.synthesis_work_dir(1, kind), "journal.rank0.jsonl")
        spans = {r["batch"]: r["timeline"] for r in read_jsonl(journal) if "timeline" in r}
        assert sorted(spans) == [0, 1], spans
        assert spans[0]["score"][0] < spans[1]["generate"][1], spans

    # the schedule gains the round exactly at the plateau sample
    plateau = [r for r in read_jsonl(run.loop_log) if r["kind"] == "plateau" and r["action"].startswith("refresh")]
    assert [r["step"] for r in plateau] == [PLATEAU_STEP]
    schedule = read_json(run.blend_schedule(1))
    assert st["blend_schedule"] == os.path.relpath(run.blend_schedule(1), run.root)
    assert [p["start"] for p in schedule["phases"]] == [0, PLATEAU_STEP * GLOBAL_BATCH] == [0, st["refresh_sample"]]
    assert sorted(k for k in schedule["phases"][1]["weights"] if k != "organic") == sorted(blended)

    # the resumed pretraining read the new sources: rebuild its data order exactly as the trainer did
    from synpro_megatron.data.tokenizer import load_tokenizer
    from synpro_megatron.pretrain import data as pdata
    from synpro_megatron.pretrain.config import PretrainConfig

    pcfg = PretrainConfig.from_dict(read_json(run.pretrain_config))
    assert pcfg.resume and pcfg.blend_schedule == run.blend_schedule(1)
    assert sorted(pcfg.synthetic) == sorted(blended)
    total = pcfg.max_steps * pcfg.global_batch
    ds = pdata.build_train_dataset(pcfg, load_tokenizer(pcfg.tokenizer), total, needs_data=True)
    sources = [ds.sources[i] for i in ds.dataset_index[:total]]
    refresh = st["refresh_sample"]
    assert set(sources[:refresh]) == {"organic"}
    assert set(sources[refresh:]) - {"organic"}, sources[refresh:]
    assert read_json(os.path.join(run.checkpoint(8), "synpro_state.json"))["consumed_samples"] == total


def test_rerun_from_a_crash_inside_a_stage_reaches_the_same_state(setup, reference):
    tmp, cfg_path = setup
    ref_run, _ = reference
    expected = final_state(ref_run)
    # the rerun must happen where the run lived (its files name their own paths): move the finished
    # run aside and put the crash image in its place
    os.rename(ref_run.root, ref_run.root + ".uninterrupted")
    shutil.copytree(str(tmp / "crash" / "run"), ref_run.root, symlinks=True)
    run, log = RunDir(ref_run.root), str(tmp / "killed.log")
    shutil.copyfile(str(tmp / "crash" / "run.log"), log)
    journal = os.path.join(run.synthesis_work_dir(1, IMAGED_KIND), "journal.rank0.jsonl")
    assert read_json(run.state)["stage"] == f"synthesize:{IMAGED_KIND}"
    done_before = {r["source_id"] for r in read_jsonl(journal)}
    assert done_before

    finish(synpro_run(cfg_path, run.root, log), log)
    assert final_state(run) == expected
    # the rerun resumed the journal: every document once, the ones done before the crash not redone
    records = read_jsonl(journal)
    assert len({r["source_id"] for r in records}) == len(records) == SYNTH_LIMIT
    with open(log, errors="replace") as f:
        stages = re.findall(r"\[synpro loop\] stage (\S+)", f.read())
    assert stages.count(f"synthesize:{IMAGED_KIND}") == 2 and stages.count("probe") == 1
    assert stages.count("synthesize:rephrase") == 1  # finished before the crash: not rerun
