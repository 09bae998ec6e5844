"""Fault matrix (issue 12): bad inputs and damaged files through the commands a user runs.

Every row asserts the exit code, the message (naming the file, line or field), that stderr holds
no traceback, and that outputs written before are byte-identical afterwards. One tiny pretrained
run directory and one prepared dataset are shared by all rows.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from synpro_megatron.cli import main as synpro

PY = sys.executable
TINY = ["--num-layers", "1", "--hidden-size", "32", "--num-attention-heads", "2", "--ffn-hidden-size", "64",
        "--seq-len", "32", "--eval-iters", "1", "--lr-warmup-steps", "1"]


def _env():
    return dict(os.environ, PATH=os.path.dirname(PY) + os.pathsep + os.environ.get("PATH", ""),
                OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


def snapshot(*paths) -> dict:
    """sha256 of every file under the given files/folders."""
    out = {}
    for root in paths:
        if os.path.isfile(root):
            with open(root, "rb") as f:
                out[root] = hashlib.sha256(f.read()).hexdigest()
            continue
        for d, _, files in os.walk(root):
            for name in files:
                p = os.path.join(d, name)
                with open(p, "rb") as f:
                    out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def docs(n=60, start=0):
    return [{"id": f"d{i}", "text": f"Document {i} talks about topic {i % 7}. " * 6} for i in range(start, start + n)]


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def cli(capsys, *argv):
    rc = synpro(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_clean_error(rc, err, *needles, code=2):
    assert rc == code, err
    assert "Traceback" not in err, err
    for n in needles:
        assert n in err, f"{n!r} not in {err!r}"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A prepared dataset and a 4-step pretraining run (started with --overwrite over an earlier
    run, which must be moved aside intact)."""
    root = tmp_path_factory.mktemp("faults")
    corpus = write_jsonl(root / "corpus.jsonl", docs())
    data = str(root / "data" / "organic")
    assert synpro(["prepare", "--input", corpus, "--output", data, "--held-out", "0.2", "--workers", "1"]) == 0
    run = root / "run"
    (run / "checkpoints" / "iter_0000003").mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("3\n")
    (run / "metrics.jsonl").write_text('{"kind": "train", "step": 3}\n')
    earlier = snapshot(str(run))
    cmd = [PY, "-m", "synpro_megatron.cli", "pretrain", "--data", data, "--run-dir", str(run), "--max-steps", "4",
           "--micro-batch", "1", "--global-batch", "2", "--eval-interval", "2", "--save-interval", "2",
           "--overwrite", *TINY]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    moved = [p for p in os.listdir(root) if p.startswith("run.old-")]
    assert len(moved) == 1 and snapshot(str(root / moved[0])) == earlier, "--overwrite must move the old run aside"
    # no TTY here: progress comes as log lines with done/total, rate and ETA
    assert "[pretrain] 4/4 step (100.0%)" in proc.stderr and "step/s" in proc.stderr
    return {"root": root, "corpus": corpus, "data": data, "run": str(run), "pretrain": cmd[:-len(TINY) - 1]}


# ------------------------------------------------------------------ prepare

def _truncated_gz(p):
    blob = gzip.compress("".join(json.dumps(d) + "\n" for d in docs()).encode())
    p.write_bytes(blob[: len(blob) // 2])


def _truncated_zst(p):
    import zstandard

    blob = zstandard.ZstdCompressor().compress("".join(json.dumps(d) + "\n" for d in docs(300)).encode())
    p.write_bytes(blob[: len(blob) * 2 // 3])


def _corrupt_zst(p):
    import zstandard

    blob = zstandard.ZstdCompressor().compress("".join(json.dumps(d) + "\n" for d in docs(300)).encode())
    p.write_bytes(blob[:20] + b"\0" * 64 + blob[84:])


def _lines(*bad):
    def make(p):
        rows = [json.dumps(d) for d in docs(20)]
        for i, text in bad:
            rows[i] = text
        write_jsonl(p, rows)
    return make


PREPARE_ROWS = [
    # (name, input file name, maker, extra args, message parts)
    ("malformed line", "bad.jsonl", _lines((6, '{"id": "x", "text": ')), [], ["bad.jsonl:7:", "malformed JSON"]),
    ("not an object", "list.jsonl", _lines((2, "[1, 2]")), [], ["list.jsonl:3:", "expected a JSON object"]),
    ("missing text field", "nofield.jsonl", _lines((4, '{"id": "y"}')), [], ["nofield.jsonl:5:", "'text'"]),
    ("text not a string", "num.jsonl", _lines((1, '{"text": 5}')), [], ["num.jsonl:2:", "not a string"]),
    ("duplicate id", "dup.jsonl", _lines((3, json.dumps(docs(1)[0]))), [], ["dup.jsonl:4:", "duplicate document id"]),
    ("invalid utf-8", "latin.jsonl", lambda p: p.write_bytes(b'{"text": "caf\xe9"}\n'), [], ["latin.jsonl:1:", "UTF-8"]),
    ("truncated gz", "cut.jsonl.gz", _truncated_gz, [], ["cut.jsonl.gz:", "truncated"]),
    ("not gzip", "plain.jsonl.gz", lambda p: write_jsonl(p, docs(3)), [], ["plain.jsonl.gz:1:", "not a gzip file"]),
    ("truncated zst", "cut.jsonl.zst", _truncated_zst, [], ["cut.jsonl.zst:", "truncated"]),
    ("truncated zst, skip", "cut2.jsonl.zst", _truncated_zst, ["--on-error", "skip"], ["cut2.jsonl.zst:", "truncated"]),
    ("corrupt zst", "bad.jsonl.zst", _corrupt_zst, [], ["bad.jsonl.zst:", "corrupt zstd data"]),
    ("no documents", "empty.jsonl", lambda p: p.write_text("\n\n"), [], ["empty.jsonl: no usable documents"]),
    ("missing input", None, None, [], ["input corpus not found", "missing.jsonl"]),
    ("held-out out of range", "ok.jsonl", _lines(), ["--held-out", "1.5"], ["--held-out must be in [0, 1)"]),
]


@pytest.mark.parametrize("name,fname,make,extra,needles", PREPARE_ROWS, ids=[r[0] for r in PREPARE_ROWS])
def test_prepare_fault_matrix(world, tmp_path, capsys, name, fname, make, extra, needles):
    src = tmp_path / (fname or "missing.jsonl")
    if make:
        make(src)
    before = snapshot(os.path.dirname(world["data"]))
    rc, out, err = cli(capsys, "prepare", "--input", str(src), "--output", world["data"], "--workers", "1", *extra)
    assert_clean_error(rc, err, *needles)
    assert snapshot(os.path.dirname(world["data"])) == before  # the earlier output is untouched, no temp files


def test_prepare_multi_worker_errors_do_not_hang(world, tmp_path, capsys):
    """A bad line at the default worker count (a CorpusError crossing into the pool) used to hang:
    run in a subprocess with a timeout, so a regression fails instead of hanging the suite."""
    bad = tmp_path / "bad.jsonl"
    rows = [json.dumps(d) for d in docs(150)]
    rows[100] = "{oops"
    write_jsonl(bad, rows)
    before = snapshot(os.path.dirname(world["data"]))
    proc = subprocess.run([PY, "-m", "synpro_megatron.cli", "prepare", "--input", str(bad), "--output", world["data"],
                           "--workers", "2"], capture_output=True, text=True, env=_env(), timeout=120)
    assert_clean_error(proc.returncode, proc.stderr, "bad.jsonl:101: malformed JSON")
    assert snapshot(os.path.dirname(world["data"])) == before
    # --on-error skip with two workers: the line is reported and the rest prepared
    rc, out, err = cli(capsys, "prepare", "--input", str(bad), "--output", str(tmp_path / "skip" / "out"),
                       "--workers", "2", "--on-error", "skip")
    assert rc == 0 and "skipped" in err and "bad.jsonl:101" in err and "Traceback" not in err, err
    assert "[prepare bad.jsonl] 149/? doc" in err  # progress as a log line (no TTY)


def test_prepare_output_folder_not_writable(world, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")  # a file where the output folder should be (root ignores chmod)
    rc, out, err = cli(capsys, "prepare", "--input", world["corpus"], "--output", str(tmp_path / "afile" / "out"),
                       "--workers", "1")
    assert_clean_error(rc, err, "cannot write", str(tmp_path / "afile"))


def test_prepare_removes_temp_files_of_dead_runs_only(world, tmp_path, capsys):
    dead = subprocess.Popen([PY, "-c", "pass"])
    dead.wait()
    out = tmp_path / "o" / "x"
    out.parent.mkdir()
    stale = [out.parent / f"x.tmp-{dead.pid}.bin", out.parent / f"x_heldout.docids.json.tmp-{dead.pid}"]
    alive = out.parent / f"x.tmp-{os.getppid()}.idx"  # a live writer's file stays
    other = out.parent / f"xy.tmp-{dead.pid}.bin"  # another output's file stays
    for p in stale + [alive, other]:
        p.write_text("partial")
    rc, _, err = cli(capsys, "prepare", "--input", world["corpus"], "--output", str(out), "--workers", "1")
    assert rc == 0, err
    assert not any(p.exists() for p in stale) and alive.exists() and other.exists()
    assert "left by a killed run" in err


# ------------------------------------------------------------------ pretrain

def _copy_run(world, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(world["run"], dst)
    return str(dst)


def _damage(kind):
    def apply(run, data_copy):
        ckpt = os.path.join(run, "checkpoints", "iter_0000004")
        if kind == "no common.pt":
            os.remove(os.path.join(ckpt, "common.pt"))
        elif kind == "half idx":
            idx = data_copy + ".idx"
            with open(idx, "rb+") as f:
                f.truncate(os.path.getsize(idx) // 2)
        elif kind == "short bin":
            b = data_copy + ".bin"
            with open(b, "rb+") as f:
                f.truncate(os.path.getsize(b) - 10)
        elif kind == "bad latest":
            with open(os.path.join(run, "checkpoints", "latest"), "w") as f:
                f.write("four\n")
    return apply


PRETRAIN_ROWS = [
    # (name, damage, extra args, message parts)
    ("rerun without --resume", None, [], ["already holds a pretraining run", "--resume", "--overwrite"]),
    ("resume-from a missing step", None, ["--resume-from", "3"],
     ["--resume-from 3", "iter_0000003 is missing", "complete checkpoints: 2, 4"]),
    ("newest checkpoint incomplete", _damage("no common.pt"), ["--resume"],
     ["newest checkpoint", "iter_0000004 is incomplete (missing common.pt)", "--resume --resume-from 2"]),
    ("latest not a number", _damage("bad latest"), ["--resume"], ["latest: expected a step number"]),
    (".idx cut in half", _damage("half idx"), ["--resume"], ["organic.idx: damaged index"]),
    (".bin shorter than its .idx", _damage("short bin"), ["--resume"], ["organic.bin: damaged data"]),
    ("synthetic without a schedule", None, ["--resume", "--synthetic", "r1=DATA"], ["need a --blend-schedule"]),
    ("synthetic unused by the schedule", None, ["--resume", "--synthetic", "r1=DATA", "--blend-schedule", "SCHED"],
     ["--synthetic r1=", "no phase of", "draws a source 'r1'"]),
    ("layout that cannot work", None, ["--resume", "--tp", "3", "--nproc-per-node", "2"],
     ["world size 2 is not divisible by tp*pp = 3*1"]),
]


@pytest.mark.parametrize("name,damage,extra,needles", PRETRAIN_ROWS, ids=[r[0] for r in PRETRAIN_ROWS])
def test_pretrain_fault_matrix(world, tmp_path, capsys, name, damage, extra, needles):
    run = _copy_run(world, tmp_path)
    data = str(tmp_path / "data" / "organic")
    shutil.copytree(os.path.dirname(world["data"]), os.path.dirname(data))
    sched = tmp_path / "schedule.json"
    sched.write_text(json.dumps({"sources": ["organic", "r1"], "phases": [{"start": 0, "weights": {"organic": 1}}]}))
    if damage:
        damage(run, data)
    before = snapshot(run, os.path.dirname(data))
    extra = [a.replace("DATA", data).replace("SCHED", str(sched)) for a in extra]
    args = ["pretrain", "--data", data, "--run-dir", run, "--max-steps", "6", "--micro-batch", "1",
            "--global-batch", "2", *TINY, *extra]
    rc, out, err = cli(capsys, *args)
    assert_clean_error(rc, err, *needles)
    assert snapshot(run, os.path.dirname(data)) == before


@pytest.mark.slow
def test_damaged_shard_under_torchrun_is_one_line(world, tmp_path):
    """Both ranks fail to load a truncated shard of the newest checkpoint: the user sees one line
    naming it and the previous complete checkpoint, then where the ranks' full output is."""
    run = _copy_run(world, tmp_path)
    ckpt = os.path.join(run, "checkpoints", "iter_0000004")
    shard = sorted(f for f in os.listdir(ckpt) if f.endswith(".distcp"))[-1]
    with open(os.path.join(ckpt, shard), "rb+") as f:
        f.truncate(100)
    before = snapshot(run)
    cmd = world["pretrain"] + ["--resume", "--nproc-per-node", "2", *TINY]
    cmd[cmd.index("--run-dir") + 1] = run
    cmd[cmd.index("--max-steps") + 1] = "6"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1, proc.stderr
    assert "iter_0000004 is damaged or unreadable" in errors[0] and "--resume --resume-from 2" in errors[0]
    details = proc.stderr.split("details: the processes' full output is in ")[1].split(")")[0]
    assert "Traceback" in open(details).read() or "error" in open(details).read()
    assert {k: v for k, v in snapshot(run).items() if not k.startswith("logs")} == before


# ------------------------------------------------------------------ blend inspect

BLEND_ROWS = [
    ("unknown source", {"sources": ["a"], "phases": [{"start": 0, "weights": {"b": 1}}]}, [],
     ["phases[0].weights", "unknown source 'b'"]),
    ("no phases", {"sources": ["a"], "phases": []}, [], ["phases"]),
    ("malformed json", "{not json", [], ["schedule.json"]),
    ("missing file", None, [], ["missing.json"]),
    ("unwritable plot", {"sources": ["a"], "phases": [{"start": 0, "weights": {"a": 1}}]},
     ["--num-samples", "50", "--out", "/nonexistent-dir/x.png"], ["/nonexistent-dir/x.png"]),
]


@pytest.mark.parametrize("name,content,extra,needles", BLEND_ROWS, ids=[r[0] for r in BLEND_ROWS])
def test_blend_inspect_fault_matrix(tmp_path, capsys, name, content, extra, needles):
    path = tmp_path / ("missing.json" if content is None else "schedule.json")
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    before = snapshot(str(tmp_path))
    rc, out, err = cli(capsys, "blend", "inspect", str(path), *extra)
    assert_clean_error(rc, err, "synpro blend inspect: error:", *needles)
    assert "error" not in out  # errors go to stderr
    assert snapshot(str(tmp_path)) == before


# ------------------------------------------------------------------ synpro run

def _loop_cfg(tmp_path, world, **over):
    cfg = {"model": "tiny", "input": world["corpus"], "token_budget": 64 * 8 * 8, "max_rounds": 0,
           "train": {"micro_batch": 2, "global_batch": 8, "seq_length": 64, "eval_interval": 2}}
    cfg.update(over)
    p = tmp_path / f"loop{len(list(tmp_path.glob('loop*.json')))}.json"
    p.write_text(json.dumps(cfg))
    return str(p)


def test_run_fault_matrix(world, tmp_path, capsys):
    # 1. a pretrain run dir (checkpoints, no loop state) is refused: the loop would adopt its checkpoints
    run = _copy_run(world, tmp_path)
    before = snapshot(run)
    rc, out, err = cli(capsys, "run", "--config", _loop_cfg(tmp_path, world), "--run-dir", run, "--runner", "fake")
    assert_clean_error(rc, err, "no loop state.json", "--overwrite")
    assert snapshot(run) == before
    # 2. a config that cannot load names the field
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": "tiny", "input": world["corpus"], "token_budget": "lots"}))
    rc, out, err = cli(capsys, "run", "--config", str(bad), "--run-dir", str(tmp_path / "r2"), "--runner", "fake")
    assert_clean_error(rc, err, "token_budget")
    # 3. a loop run dir: a rerun continues; a changed immutable field is refused; --overwrite moves it aside
    loop = str(tmp_path / "loop")
    rc, _, err = cli(capsys, "run", "--config", _loop_cfg(tmp_path, world), "--run-dir", loop, "--runner", "fake",
                     "--max-stages", "2")
    assert rc == 0, err
    before = snapshot(loop)
    rc, out, err = cli(capsys, "run", "--config", _loop_cfg(tmp_path, world, model="400m"), "--run-dir", loop,
                       "--runner", "fake")
    assert_clean_error(rc, err, "model")
    assert snapshot(loop) == before
    rc, out, err = cli(capsys, "run", "--config", _loop_cfg(tmp_path, world, model="400m"), "--run-dir", loop,
                       "--runner", "fake", "--max-stages", "1", "--overwrite")
    assert rc == 0, err
    moved = [p for p in os.listdir(tmp_path) if p.startswith("loop.old-")]
    assert len(moved) == 1 and snapshot(str(tmp_path / moved[0])) == before


def test_run_stage_failure_is_one_line(world, tmp_path, capsys):
    """A real stage (prepare, a subprocess) fails on a bad line: `synpro run` ends with ONE line that
    carries the stage's own error (file and line), no traceback."""
    bad = tmp_path / "bad.jsonl"
    _lines((5, "{oops"))(bad)
    rc, out, err = cli(capsys, "run", "--config", _loop_cfg(tmp_path, world, input=str(bad)), "--run-dir",
                       str(tmp_path / "loop"))
    assert_clean_error(rc, err, code=1)
    last = err.strip().splitlines()[-1]
    assert last.startswith("synpro run: error: stage prepare: synpro prepare: error: ") and "bad.jsonl:6:" in last


# ------------------------------------------------------------------ synpro synthesize

def test_synthesize_fault_matrix(world, tmp_path, capsys):
    run = tmp_path / "run"
    rnd = run / "synthetic" / "round_1"
    (rnd / ".work" / "rephrase").mkdir(parents=True)
    (rnd / ".work" / "rephrase" / "journal.rank0.jsonl").write_text('{"source_id": "d1"}\n')
    (rnd / "rephrase.bin").write_bytes(b"\1\2")
    (rnd / "rephrase.idx").write_bytes(b"\3")
    before = snapshot(str(run))
    # a missing source file: named, and the round is untouched
    rc, out, err = cli(capsys, "synthesize", "--kind", "rephrase", "--round", "1", "--run-dir", str(run),
                       "--source-jsonl", str(tmp_path / "nope.jsonl"))
    assert_clean_error(rc, err, "nope.jsonl")
    assert snapshot(str(run)) == before
    # --overwrite (and --restart) move the round's journal and outputs aside, never delete them
    rc, out, err = cli(capsys, "synthesize", "--kind", "rephrase", "--round", "1", "--run-dir", str(run),
                       "--source-jsonl", str(tmp_path / "nope.jsonl"), "--overwrite")
    assert_clean_error(rc, err, "nope.jsonl")
    moved = [p for p in os.listdir(rnd) if p.startswith("rephrase.old-")]
    assert len(moved) == 1 and "moved round 1 rephrase" in err
    r1 = os.path.join("synthetic", "round_1")
    assert snapshot(str(rnd / moved[0])) == {
        os.path.join("rephrase", "journal.rank0.jsonl"): before[os.path.join(r1, ".work", "rephrase", "journal.rank0.jsonl")],
        "rephrase.bin": before[os.path.join(r1, "rephrase.bin")],
        "rephrase.idx": before[os.path.join(r1, "rephrase.idx")]}
