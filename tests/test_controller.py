"""The loop controller, end to end with the fake stage runner: crash anywhere, rerun, same result."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from synpro_megatron.loop import ConfigError, Controller, LoopConfig, LoopState, StageFailed
from synpro_megatron.fsutil import read_jsonl
from synpro_megatron.loop.plateau import eval_series
from synpro_megatron.loop.runner import launch_prefix

from fake_runner import FakeCrash, FakeRunner


def _read(path):
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:  # a dataset file: compared byte for byte
        return data


SEQ = 256  # tiny's sequence length


def config_dict(tmp_path, **over):
    inp = tmp_path / "organic.jsonl"
    inp.write_text('{"text": "hello"}\n')
    d = {
        "model": "tiny",
        "input": str(inp),
        "token_budget": 480 * 8 * SEQ,  # 480 steps at global batch 8
        "max_rounds": 2,
        "train": {"global_batch": 8, "micro_batch": 2, "eval_interval": 10, "save_interval": 50, "chunk_evals": 6},
        "plateau": {"window": 3, "rel_threshold": 0.01, "patience": 2, "min_steps_after_refresh": 30},
        "blend": {"organic": 0.5, "new_round": {"rephrase": 0.25, "reformat": 0.25}, "earlier_rounds": 0.1},
    }
    d.update(over)
    return d


@pytest.fixture(autouse=True)
def no_fsync(monkeypatch):
    # renames stay atomic; skipping fsync keeps ~100 crash-and-rerun loops within seconds
    monkeypatch.setenv("SYNPRO_FSYNC", "0")


def make_cfg(tmp_path, **over):
    return LoopConfig.from_dict(config_dict(tmp_path, **over))


def quiet(_msg):
    pass


def run_loop(cfg, run_dir, runner=None):
    return Controller(cfg, str(run_dir), runner=runner or FakeRunner(), echo=quiet).run()


def snapshot(run_dir):
    """Everything a finished run leaves that must not depend on crashes along the way."""
    run_dir = str(run_dir)
    snap = {"state": json.loads(_read(os.path.join(run_dir, "state.json")))}
    snap["log"] = [{k: v for k, v in r.items() if k != "time"} for r in read_jsonl(os.path.join(run_dir, "loop_log.jsonl"))]
    metrics = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    snap["evals"] = eval_series(metrics, "reference_loss")
    snap["train"] = sorted({r["step"]: r["lm_loss"] for r in metrics if r["kind"] == "train"}.items())
    snap["latest"] = _read(os.path.join(run_dir, "checkpoints", "latest"))
    files = {}
    for sub in ("blend", "synthetic", "rounds", "data"):
        for root, _, names in os.walk(os.path.join(run_dir, sub)):
            for n in names:
                p = os.path.join(root, n)
                files[os.path.relpath(p, run_dir)] = _read(p)
    snap["files"] = files
    return snap


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run: its snapshot and the stage calls it made."""
    os.environ["SYNPRO_FSYNC"] = "0"  # module-scoped: the function-scoped monkeypatch is not active yet
    tmp = tmp_path_factory.mktemp("ref")
    runner = FakeRunner()
    cfg = make_cfg(tmp)
    state = run_loop(cfg, tmp / "run", runner)
    return {"snap": snapshot(tmp / "run"), "calls": list(runner.calls), "state": state, "dir": tmp / "run",
            "cfg": cfg}


# ------------------------------------------------------------------ the uninterrupted loop
def test_loop_runs_every_stage_in_order(reference):
    st = reference["state"]
    assert st.stage == "done" and st.rounds_done == 2
    assert st.step == 480 and st.tokens == 480 * 8 * SEQ
    stages = [h["stage"] for h in st.history]
    assert stages[0] == "prepare"
    round_stages = ["probe", "train_generator:rephrase", "train_generator:reformat", "synthesize:rephrase",
                    "synthesize:reformat", "extend_blend"]
    firsts = [i for i, s in enumerate(stages) if s == "probe"]
    assert len(firsts) == 2
    for i in firsts:
        assert stages[i:i + 6] == round_stages
        assert stages[i - 1] == "pretrain" and stages[i + 6] == "pretrain"
    assert stages[-1] == "pretrain"


def test_rounds_extend_the_blend_schedule_from_the_plateau_sample(reference):
    run_dir, st = reference["dir"], reference["state"]
    sched = json.loads(_read(run_dir / "blend" / "schedule_round_2.json"))
    plateaus = [h for h in st.history if h["stage"] == "extend_blend"]
    assert [p["start"] for p in sched["phases"]] == [0] + [h["start_sample"] for h in plateaus]
    assert sched["phases"][1]["weights"] == {"organic": 0.5, "round1_rephrase": 0.25, "round1_reformat": 0.25}
    w2 = sched["phases"][2]["weights"]
    assert w2["round1_rephrase"] == pytest.approx(0.05 / 1.1) and w2["organic"] == pytest.approx(0.5 / 1.1)
    # round 1's file is the prefix of round 2's: earlier phases never change
    sched1 = json.loads(_read(run_dir / "blend" / "schedule_round_1.json"))
    assert sched["phases"][:2] == sched1["phases"]
    assert sorted(st.synthetic) == ["round1_reformat", "round1_rephrase", "round2_reformat", "round2_rephrase"]
    assert st.synthetic["round2_reformat"] == "synthetic/round_2/reformat"
    # the probe and generators of each round worked on the plateau checkpoint
    for k, h in enumerate(plateaus, start=1):
        assert h["start_sample"] % 8 == 0
        probe = json.loads(_read(run_dir / "rounds" / f"round_{k}" / "probe" / "reference_grads.json"))
        assert probe["checkpoint"] == f"iter_{h['start_sample'] // 8:07d}"


def test_plateau_decisions_are_logged_with_their_numbers(reference):
    log = reference["snap"]["log"]
    checks = [r for r in log if r["kind"] == "plateau"]
    assert len(checks) == sum(1 for h in reference["state"].history if h["stage"] == "pretrain")
    refresh = [r for r in checks if r["action"].startswith("refresh")]
    assert len(refresh) == 2 and all(r["plateau"] for r in refresh)
    for r in refresh:
        assert r["rel_improvement"] < 0.01 and r["flat_count"] >= 2 and r["steps_since_refresh"] >= 30
    assert checks[-1]["action"] == "budget spent"
    assert [r["event"] for r in log] == list(range(len(log)))


def test_rerunning_a_finished_loop_does_nothing(reference):
    runner = FakeRunner()
    run_loop(reference["cfg"], reference["dir"], runner)
    assert runner.calls == []


# ------------------------------------------------------------------ crash anywhere, rerun
def crash_points(reference):
    n = len(reference["calls"])
    return [(i, mode) for i in range(1, n + 1) for mode in ("before", "mid", "after")]


def test_crash_at_every_stage_then_rerun_matches_uninterrupted(reference, tmp_path):
    cfg = make_cfg(tmp_path)
    points = crash_points(reference)
    assert len(points) >= 50  # every stage of both rounds, three ways
    for i, mode in points:
        run_dir = tmp_path / f"run_{i}_{mode}"
        crashing = FakeRunner(crash_at=i, crash_mode=mode)
        with pytest.raises(FakeCrash):
            run_loop(cfg, run_dir, crashing)
        crashed_stage = crashing.calls[-1]
        rerun = FakeRunner()
        run_loop(cfg, run_dir, rerun)
        assert snapshot(run_dir) == reference["snap"], (i, mode, crashed_stage)
        # write-then-mark: only the interrupted stage is redone, and nothing else
        if mode == "after" and crashed_stage == "pretrain":
            # its checkpoint already reaches the chunk's end: the rerun decides without retraining
            assert crashing.calls + rerun.calls == reference["calls"], (i, mode)
        else:
            assert crashing.calls[:-1] + rerun.calls == reference["calls"], (i, mode)


def test_crash_between_log_and_state_write_then_rerun(reference, tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path)
    real_save = LoopState.save
    n_writes = len(reference["state"].history) + 1  # one per finished stage, plus the initial state
    for k in range(1, n_writes + 1):
        calls = {"n": 0}

        def flaky_save(self, path, k=k, calls=calls):
            calls["n"] += 1
            if calls["n"] == k:
                raise FakeCrash(f"died before state write {k}")
            real_save(self, path)

        run_dir = tmp_path / f"run_{k}"
        monkeypatch.setattr(LoopState, "save", flaky_save)
        with pytest.raises(FakeCrash):
            run_loop(cfg, run_dir)
        monkeypatch.setattr(LoopState, "save", real_save)
        run_loop(cfg, run_dir)
        assert snapshot(run_dir) == reference["snap"], k


# ------------------------------------------------------------------ failures and guards
def test_stage_without_outputs_fails_and_is_not_marked(tmp_path):
    class NoProbeOutput(FakeRunner):
        def probe(self, run_dir, round_k, checkpoint, args=()):
            self.calls.append("probe")  # "succeeds" but writes nothing

    cfg = make_cfg(tmp_path)
    with pytest.raises(StageFailed, match=r"probe: finished but wrote nothing under .*rounds/round_1/probe"):
        run_loop(cfg, tmp_path / "run", NoProbeOutput())
    state = LoopState.load(str(tmp_path / "run" / "state.json"))
    assert state.stage == "probe" and state.round == 1
    run_loop(cfg, tmp_path / "run")  # a working runner picks up at the probe
    assert LoopState.load(str(tmp_path / "run" / "state.json")).done


def test_changing_an_immutable_field_is_refused(tmp_path):
    Controller(make_cfg(tmp_path), str(tmp_path / "run"), runner=FakeRunner(), echo=quiet).run(max_stages=2)
    d = config_dict(tmp_path)
    d["train"]["global_batch"] = 16
    with pytest.raises(ValueError, match=r"loop_config.json: .*train.global_batch"):
        Controller(LoopConfig.from_dict(d), str(tmp_path / "run"), runner=FakeRunner(), echo=quiet)
    # the budget may grow: the loop just continues
    d = config_dict(tmp_path, token_budget=560 * 8 * SEQ)
    st = Controller(LoopConfig.from_dict(d), str(tmp_path / "run"), runner=FakeRunner(), echo=quiet).run()
    assert st.done and st.step == 560


def test_one_controller_per_run_dir(tmp_path):
    import fcntl

    cfg = make_cfg(tmp_path)
    ctl = Controller(cfg, str(tmp_path / "run"), runner=FakeRunner(), echo=quiet)
    with open(tmp_path / "run" / ".loop.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # as if another `synpro run` were active
        with pytest.raises(ValueError, match="another `synpro run` is driving"):
            ctl.run()
    assert ctl.run().done


def test_stage_args_fill_in_round_paths(tmp_path):
    seen = {}

    class Recording(FakeRunner):
        def synthesize(self, kind, run_dir, round_k, generator=None, args=(), organic=None):
            seen.setdefault(round_k, list(args))
            super().synthesize(kind, run_dir, round_k, generator, args, organic)

    d = config_dict(tmp_path)
    d["generators"] = {"synth_args": ["--select", "top-loss:0.5", "--doc-losses", "{round_dir}/probe/doc_losses.jsonl",
                                      "--seed", "{round}"]}
    run_loop(LoopConfig.from_dict(d), tmp_path / "run", Recording())
    assert seen[2] == ["--select", "top-loss:0.5", "--doc-losses",
                       str(tmp_path / "run" / "rounds" / "round_2" / "probe" / "doc_losses.jsonl"), "--seed", "2"]


def test_empty_synthetic_kind_is_left_out_of_the_blend(tmp_path):
    class GateDropsReformat(FakeRunner):
        def synthesize(self, kind, run_dir, round_k, generator=None, args=(), organic=None):
            super().synthesize(kind, run_dir, round_k, generator, args, organic)
            if kind == "reformat" or round_k == 2:  # nothing passed the gate
                open(os.path.join(run_dir, "synthetic", f"round_{round_k}", f"{kind}.bin"), "w").close()

    st = run_loop(make_cfg(tmp_path), tmp_path / "run", GateDropsReformat())
    assert st.done and st.rounds_done == 2
    assert sorted(st.synthetic) == ["round1_rephrase"]  # round 2 was empty altogether
    # the empty round keeps the blend as it was: its schedule file is round 1's, so round 3 finds a base
    assert st.blend_schedule == "blend/schedule_round_2.json"
    sched = json.loads(_read(tmp_path / "run" / "blend" / "schedule_round_1.json"))
    assert json.loads(_read(tmp_path / "run" / "blend" / "schedule_round_2.json")) == sched
    assert sched["phases"][1]["weights"] == {"organic": 2 / 3, "round1_rephrase": 1 / 3}
    ext = [h for h in st.history if h["stage"] == "extend_blend"]
    assert ext[0]["empty"] == ["reformat"] and ext[1]["empty"] == ["rephrase", "reformat"]
    assert ext[1]["weights"] is None


def test_max_rounds_zero_only_pretrains(tmp_path):
    st = run_loop(make_cfg(tmp_path, max_rounds=0), tmp_path / "run")
    assert st.done and st.rounds_done == 0
    assert {h["stage"] for h in st.history} == {"prepare", "pretrain"}


# ------------------------------------------------------------------ config
def test_config_file_errors_name_file_and_field(tmp_path):
    p = tmp_path / "loop.yaml"
    p.write_text("token_budget: 1000000\ninput: x.jsonl\ntrain: {global_bach: 8}\n")
    with pytest.raises(ConfigError, match=r"loop.yaml: unknown field\(s\) 'train.global_bach'"):
        LoopConfig.load(str(p))
    p.write_text("token_budget: 1000000\ninput: x.jsonl\nplateau: {window: three}\n")
    with pytest.raises(ConfigError, match=r"loop.yaml: field 'plateau.window': expected an integer"):
        LoopConfig.load(str(p))
    p.write_text("token_budget: 1000000\ninput: x.jsonl\nplateau: {patience: 0}\n")
    with pytest.raises(ConfigError, match=r"field 'plateau.patience': must be >= 1"):
        LoopConfig.load(str(p))
    p.write_text("token_budget: 1000000\n")
    with pytest.raises(ConfigError, match=r"'data' or 'input'"):
        LoopConfig.load(str(p))
    p.write_text("input: x.jsonl\n")
    with pytest.raises(ConfigError, match=r"field 'token_budget' is required"):
        LoopConfig.load(str(p))
    p.write_text("token_budget: 1000000\ninput: x.jsonl\nblend: {new_round: {rephrase: 1.0}}\n")
    with pytest.raises(ConfigError, match=r"blend.new_round.*missing \['reformat'\]"):
        LoopConfig.load(str(p))
    p.write_text("token_budget: 1000000\ninput: x.jsonl\nparallel: {tp: 2, nproc_per_node: 3}\n")
    with pytest.raises(ConfigError, match=r"field 'parallel'.*not divisible"):
        LoopConfig.load(str(p))
    p.write_text("- not a mapping\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        LoopConfig.load(str(p))
    with pytest.raises(ConfigError, match="not found"):
        LoopConfig.load(str(tmp_path / "missing.yaml"))


def test_config_defaults_and_relative_paths(tmp_path):
    p = tmp_path / "sub" / "loop.yaml"
    p.parent.mkdir()
    p.write_text("token_budget: 2.0e+6\ninput: ../organic.jsonl.gz\nmodel: 1b\n")
    cfg = LoopConfig.load(str(p))
    assert cfg.input == str(tmp_path / "organic.jsonl.gz")
    assert cfg.token_budget == 2_000_000 and cfg.seq_length() == 2048
    assert cfg.budget_samples() == 2_000_000 // 2048 and cfg.total_steps() == -(-976 // 8)
    assert cfg.generators.kinds == ["rephrase", "reformat"] and cfg.plateau.smoothing == "ema"


# ------------------------------------------------------------------ runner commands
def test_pretrain_command_line(tmp_path):
    cfg = make_cfg(tmp_path, parallel={"nproc_per_node": 2})
    ctl = Controller(cfg, str(tmp_path / "run"), runner=FakeRunner(), echo=quiet)
    ctl.state.data = "/data/organic"
    ctl.state.blend_schedule = "blend/schedule_round_1.json"
    ctl.state.synthetic = {"round1_rephrase": "synthetic/round_1/rephrase"}
    pc = ctl._pretrain_config(stop_at_sample=240, resume=True)
    from synpro_megatron.pretrain.launch import config_to_args

    args = config_to_args(pc)  # what CliRunner.pretrain passes
    joined = " ".join(args)
    for flag, value in (("--data", "/data/organic"), ("--max-steps", "480"), ("--micro-batch", "2"),
                        ("--global-batch", "8"), ("--stop-at-sample", "240")):
        assert args[args.index(flag) + 1] == value, flag
    assert "--resume" in args
    assert f"--blend-schedule {tmp_path / 'run' / 'blend/schedule_round_1.json'}" in joined
    assert f"--synthetic round1_rephrase={tmp_path / 'run' / 'synthetic/round_1/rephrase'}" in joined
    # the pretrain CLI parses exactly these arguments back into the same config
    from synpro_megatron.pretrain.launch import add_pretrain_args, config_from_args
    import argparse

    parser = argparse.ArgumentParser()
    add_pretrain_args(parser)
    back = config_from_args(parser.parse_args(args))
    for f in ("data", "run_dir", "max_steps", "global_batch", "stop_at_sample", "blend_schedule", "synthetic",
              "resume", "lr", "seed"):
        assert getattr(back, f) == getattr(pc, f), f
    assert launch_prefix(cfg.parallel, "py")[:4] == ["py", "-m", "torch.distributed.run", "--standalone"]
    two_nodes = make_cfg(tmp_path, parallel={"nnodes": 2, "nproc_per_node": 4, "tp": 4}).parallel
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        launch_prefix(two_nodes, "py", env={})
    cmd = launch_prefix(two_nodes, "py", env={"MASTER_ADDR": "10.0.0.1", "SLURM_JOB_ID": "7"})
    assert cmd[:2] == ["srun", "--nodes=2"] and "--rdzv-endpoint=10.0.0.1:29500" in cmd and "--nnodes=2" in cmd


# ------------------------------------------------------------------ the CLI, signals and resume
def synpro_run(cfg_path, run_dir, *extra, env=None):
    return subprocess.Popen([sys.executable, "-m", "synpro_megatron.cli", "run", "--config", str(cfg_path),
                             "--run-dir", str(run_dir), "--runner", "fake", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, **(env or {})))


def test_cli_sigterm_checkpoints_exits_143_and_rerun_finishes(tmp_path):
    d = config_dict(tmp_path, max_rounds=1, token_budget=200 * 8 * SEQ)
    d["train"]["chunk_evals"] = 10  # 100-step chunks: few subprocesses
    d["plateau"]["min_steps_after_refresh"] = 0
    cfg_path = tmp_path / "loop.json"
    cfg_path.write_text(json.dumps(d))

    run_loop(LoopConfig.load(str(cfg_path)), tmp_path / "ref")  # the uninterrupted reference, in-process

    run_dir = tmp_path / "run"
    proc = synpro_run(cfg_path, run_dir, env={"SYNPRO_FAKE_STEP_SECONDS": "0.02"})
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") > 20):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, out
    assert "stopped on a signal" in out
    latest = int((run_dir / "checkpoints" / "latest").read_text())
    assert 0 < latest < 100  # checkpointed mid-chunk, on the signal
    assert LoopState.load(str(run_dir / "state.json")).stage == "pretrain"

    again = synpro_run(cfg_path, run_dir)
    out, _ = again.communicate(timeout=120)
    assert again.returncode == 0, out
    assert snapshot(run_dir) == snapshot(tmp_path / "ref")
    status = subprocess.run([sys.executable, "-m", "synpro_megatron.cli", "run", "--config", str(cfg_path),
                             "--run-dir", str(run_dir), "--status"], capture_output=True, text=True)
    assert json.loads(status.stdout)["stage"] == "done"


def test_cli_bad_config_exits_2_naming_the_field(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("token_budget: 100000\ninput: x.jsonl\nplateau: {windw: 3}\n")
    r = subprocess.run([sys.executable, "-m", "synpro_megatron.cli", "run", "--config", str(p), "--run-dir",
                        str(tmp_path / "run")], capture_output=True, text=True)
    assert r.returncode == 2 and "bad.yaml: unknown field(s) 'plateau.windw'" in r.stderr


def test_interrupt_signals_a_launchers_ranks_not_the_launcher(tmp_path):
    """torchrun would killpg its ranks' process groups (killing checkpoint helpers); the runner
    signals the ranks directly instead, and the launcher just sees them exit."""
    import threading

    from synpro_megatron.loop.runner import Interrupted, SubprocessRunner

    rank = tmp_path / "rank.py"
    rank.write_text(textwrap.dedent(f"""
        import signal, sys, time
        def stop(*a):
            open({str(tmp_path / "rank_checkpointed")!r}, "w").close()
            sys.exit(143)
        signal.signal(signal.SIGTERM, stop)
        open({str(tmp_path / "rank_up")!r}, "w").close()
        time.sleep(60)
    """))
    launcher = tmp_path / "launcher.py"
    launcher.write_text(textwrap.dedent(f"""
        import signal, subprocess, sys
        signal.signal(signal.SIGTERM, lambda *a: open({str(tmp_path / "launcher_signalled")!r}, "w").close())
        sys.exit(1 if subprocess.call([sys.executable, {str(rank)!r}]) else 0)
    """))

    class Runner(SubprocessRunner):
        prepare = pretrain = probe = train_generator = synthesize = None

    runner = Runner(echo=quiet)

    def stop_when_up():
        deadline = time.time() + 30
        while not (tmp_path / "rank_up").exists() and time.time() < deadline:
            time.sleep(0.05)
        runner.interrupt(signal.SIGTERM)

    t = threading.Thread(target=stop_when_up)
    t.start()
    with pytest.raises(Interrupted, match="stopped on a signal"):
        runner.run_command("pretrain", [sys.executable, str(launcher)], signal_children=True)
    t.join()
    assert (tmp_path / "rank_checkpointed").exists()
    assert not (tmp_path / "launcher_signalled").exists()


def test_a_small_round_is_read_at_most_max_epochs_times(tmp_path):
    from synpro_megatron.data.indexed import read_documents

    blend = {"organic": 0.5, "new_round": {"rephrase": 0.25, "reformat": 0.25}, "earlier_rounds": 0.1,
             "max_epochs": 0.05}
    cfg = make_cfg(tmp_path, max_rounds=1, blend=blend)
    st = run_loop(cfg, tmp_path / "run")
    ext = [h for h in st.history if h["stage"] == "extend_blend"][0]
    remaining = cfg.total_steps() * 8 - ext["start_sample"]
    caps = {}
    for kind in ("rephrase", "reformat"):
        tokens = sum(len(d) for d in read_documents(str(tmp_path / "run" / "synthetic" / "round_1" / kind)))
        caps[kind] = 0.05 * tokens / SEQ / remaining
        assert ext["epoch_caps"][f"round1_{kind}"] == pytest.approx(caps[kind], rel=1e-4)
        assert ext["weights"][f"round1_{kind}"] == pytest.approx(min(0.25, caps[kind]), rel=1e-4)
    assert min(caps.values()) < 0.25  # the cap did bind: the freed share went to organic data
    assert ext["weights"]["organic"] == pytest.approx(1 - sum(min(0.25, c) for c in caps.values()))
    sched = json.loads(_read(tmp_path / "run" / "blend" / "schedule_round_1.json"))
    assert sched["phases"][1]["weights"] == pytest.approx(ext["weights"])

    # in the next round, the earlier round's share is capped too (its budget left is smaller now)
    st = run_loop(make_cfg(tmp_path, max_rounds=2, blend=blend), tmp_path / "run3")
    second = [h for h in st.history if h["stage"] == "extend_blend"][1]
    assert {"round1_rephrase", "round2_rephrase"} <= set(second["epoch_caps"])
    for name, cap in second["epoch_caps"].items():
        assert second["weights"][name] <= cap + 1e-9
    assert sum(second["weights"].values()) == pytest.approx(1.0)

    # no limit: the configured weights
    blend["max_epochs"] = None
    st = run_loop(make_cfg(tmp_path, max_rounds=1, blend=blend), tmp_path / "run2")
    ext = [h for h in st.history if h["stage"] == "extend_blend"][0]
    assert ext["weights"] == {"organic": 0.5, "round1_rephrase": 0.25, "round1_reformat": 0.25}


def test_a_run_started_before_a_new_config_field_resumes(tmp_path):
    cfg = make_cfg(tmp_path, max_rounds=0)
    run_loop(cfg, tmp_path / "run")
    snap = tmp_path / "run" / "loop_config.json"
    old = json.loads(_read(snap))
    del old["held_out"]  # an older version did not have the field
    snap.write_text(json.dumps(old))
    assert run_loop(make_cfg(tmp_path, max_rounds=0), tmp_path / "run").done
    with pytest.raises(ValueError, match="held_out"):
        run_loop(make_cfg(tmp_path, max_rounds=0, held_out=0.2), tmp_path / "run")
