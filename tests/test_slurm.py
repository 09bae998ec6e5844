"""Real Slurm: the sbatch scripts and the NeMo-Run pipeline on the local test cluster.

Bring the cluster up first (CI does): `.ci/slurm_up.sh && source /tmp/synpro-slurm/slurm_env.sh`.
These tests are skipped only when there is no Slurm to talk to (no sbatch, or no SLURM_CONF and
no /etc/slurm/slurm.conf). Without accounting (no slurmdbd) job states come from
`scontrol show job`, which keeps finished jobs for MinJobAge (600 s on the local cluster).
"""
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time

import pytest


def _read(path):
    with open(path) as f:
        return f.read()


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
            "PREEMPTED"}
HAVE_SLURM = shutil.which("sbatch") is not None and bool(
    os.environ.get("SLURM_CONF") or os.path.exists("/etc/slurm/slurm.conf"))

pytestmark = [pytest.mark.slurm,
              pytest.mark.skipif(not HAVE_SLURM, reason="no Slurm (run .ci/slurm_up.sh and export SLURM_CONF)")]


def job_env(**extra):
    """The submitting environment: jobs inherit it (sbatch --export=ALL), so the venv comes first."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["SYNPRO_PYTHON"] = sys.executable
    env.update({k: str(v) for k, v in extra.items()})
    return env


def sbatch(args, cwd, env):
    r = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, cwd=cwd, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().split(";")[0]


def job_info(job_id):
    r = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True)
    assert r.returncode == 0, f"scontrol show job {job_id}: {r.stderr}"
    return dict(re.findall(r"(\w[\w/:]*)=(\S*)", r.stdout))


def wait_for(job_ids, timeout, poll=1.0, on_poll=None):
    deadline = time.time() + timeout
    while True:
        infos = {j: job_info(j) for j in job_ids}
        if on_poll:
            on_poll(infos)
        if all(i["JobState"] in TERMINAL for i in infos.values()):
            return infos
        if time.time() > deadline:
            subprocess.run(["scancel", *map(str, job_ids)])
            pytest.fail(f"jobs not finished after {timeout} s: { {j: i['JobState'] for j, i in infos.items()} }")
        time.sleep(poll)


def read_state(run_dir):
    return json.loads(_read(os.path.join(run_dir, "state.json")))


def test_sbatch_scripts_pass_test_only(tmp_path):
    (tmp_path / "logs").mkdir()
    for script, nodes in (("synpro_400m.sh", 2), ("synpro_1b.sh", 2)):  # the local cluster has 2 nodes, 1b wants 4
        r = subprocess.run(["sbatch", "--test-only", "-N", str(nodes), os.path.join(REPO, "slurm", script)],
                           capture_output=True, text=True, cwd=tmp_path, env=job_env())
        assert r.returncode == 0 and "to start at" in r.stderr, r.stderr
    text = _read(os.path.join(REPO, "slurm", "synpro_1b.sh"))
    for line in ("#SBATCH --nodes=4", "#SBATCH --gpus-per-node=8", "#SBATCH --signal=B:USR1@300", "#SBATCH --requeue",
                 "#SBATCH --output=logs/%x-%j.out", "#SBATCH --time=24:00:00"):
        assert line in text


def test_smoke_fake_payload_checkpoints_on_usr1_and_requeues(tmp_path):
    """The preemption path end to end: USR1 to the batch shell -> SIGTERM to the controller ->
    SIGTERM to the (fake) trainer, which checkpoints -> scontrol requeue -> the requeued job
    continues from state.json and completes."""
    (tmp_path / "logs").mkdir()
    run_dir = tmp_path / "run"
    # SYNPRO_ROUNDS=0: smoke mode now builds a round; this test is about preemption of pretraining
    # alone, as before that change (the round's stages moved the USR1 into round 1's pretraining)
    env = job_env(SYNPRO_SMOKE=1, SYNPRO_RUNNER="fake", SYNPRO_RUN_DIR=run_dir, SYNPRO_FAKE_STEP_SECONDS=0.05,
                  SYNPRO_TOKENS=200 * 8 * 256, SYNPRO_FSYNC=0, SYNPRO_ROUNDS=0)
    job = sbatch(["-N", "1", "-t", "10", os.path.join(REPO, "slurm", "synpro_400m.sh")], tmp_path, env)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 40):
        assert time.time() < deadline, f"job {job} never started training: {job_info(job)['JobState']}"
        time.sleep(0.2)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)

    def skip_requeue_delay(infos):
        i = infos[job]
        # a requeued job waits ~2 minutes (BeginTime) before it is eligible again; not worth waiting for
        if i["JobState"] == "PENDING" and int(i["Restarts"]) >= 1 and i.get("Reason") == "BeginTime":
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"])

    info = wait_for([job], timeout=300, on_poll=skip_requeue_delay)[job]
    log = _read(tmp_path / "logs" / f"synpro-400m-{job}.out")
    assert info["JobState"] == "COMPLETED", log
    assert int(info["Restarts"]) == 1, log
    assert "got SIGUSR1" in log and f"requeueing job {job}" in log and "stopped on a signal" in log
    assert f"job {job} restart 1" in log
    st = read_state(run_dir)
    assert st["stage"] == "done" and st["step"] == 200
    steps = {json.loads(line)["step"] for line in metrics.read_text().splitlines()
             if json.loads(line)["kind"] == "train"}
    assert steps == set(range(1, 201))


@pytest.mark.slow
def test_smoke_loop_runs_every_stage_with_synthesis_over_two_nodes_times_two_ranks(tmp_path):
    """The README's smoke line on a two-node allocation: `sbatch -N 2 --ntasks-per-node=2
    slurm/synpro_1b.sh` with SYNPRO_SMOKE=1 runs the real loop (prepare, tiny CPU pretraining to
    the forced first plateau, probe, one GRPO step per kind, synthesis, the blend extension,
    resumed pretraining). Each synthesis stage is one srun step of 2 nodes x 2 tasks, every rank
    told its rank and world on its command line (inheriting the batch step's SLURM_PROCID and
    SLURM_NTASKS made it rank 0 of 4, waiting for ranks that never started): every selected
    document is rewritten exactly once, every rank leaves its done marker, the job completes."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from tiny_generator import make_tiny_generator

    (tmp_path / "logs").mkdir()
    src = os.path.join(REPO, "synpro_megatron", "assets", "web_sample.jsonl.gz")
    with gzip.open(src, "rt") as f:
        docs = [next(f) for _ in range(800)]
    (tmp_path / "organic.jsonl").write_text("".join(docs))
    run_dir = tmp_path / "run"
    env = job_env(SYNPRO_SMOKE=1, SYNPRO_RUN_DIR=run_dir, SYNPRO_INPUT=tmp_path / "organic.jsonl",
                  SYNPRO_TOKENS=20 * 8 * 256, SYNPRO_EVAL_INTERVAL=5, SYNPRO_SAVE_INTERVAL=10, SYNPRO_CHUNK_EVALS=2,
                  SYNPRO_GENERATOR=make_tiny_generator(tmp_path / "gen"),  # GRPO in seconds (noise text)
                  SYNPRO_SYNTH_NODES=2, SYNPRO_SYNTH_TASKS_PER_NODE=2, SYNPRO_SYNTH_LIMIT=8, OMP_NUM_THREADS=1,
                  SYNPRO_FSYNC=0)
    job = sbatch(["-N", "2", "--ntasks-per-node=2", "-t", "30", os.path.join(REPO, "slurm", "synpro_1b.sh")],
                 tmp_path, env)
    info = wait_for([job], timeout=1500, poll=3)[job]
    log = _read(tmp_path / "logs" / f"synpro-1b-{job}.out")
    assert info["JobState"] == "COMPLETED", log[-5000:]

    # pretraining: to the plateau at step 10, then resumed over the blend to the budget
    st = read_state(run_dir)
    assert st["stage"] == "done" and st["step"] == 20 and st["round"] == 1
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "20"
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["kind"] == "train"]
    evals = [r for r in recs if r["kind"] == "eval"]
    assert [r["step"] for r in train][-1] == 20 and all(r["lm_loss"] > 0 for r in train)
    assert {r["step"] for r in evals} >= {5, 10, 15, 20}
    assert all(r["reference_loss"] > 0 and r["heldout_loss"] > 0 for r in evals)
    stages = [r["stage"] for r in map(json.loads, (run_dir / "loop_log.jsonl").read_text().splitlines())
              if r.get("kind") == "stage"]
    assert stages == ["prepare", "pretrain", "probe", "train_generator:rephrase", "train_generator:reformat",
                      "synthesize:rephrase", "synthesize:reformat", "extend_blend", "pretrain"], stages

    # synthesis: one srun step of 2 nodes x 2 ranks per kind, each document exactly once
    assert log.count("srun --nodes=2 --ntasks=4 --ntasks-per-node=2") >= 2, log[-5000:]
    manifest = json.loads((run_dir / "synthetic" / "manifest.json").read_text())
    for kind in ("rephrase", "reformat"):
        work = run_dir / "synthetic" / "round_1" / ".work" / kind
        done = [json.loads((work / f"done.rank{r}.json").read_text()) for r in range(4)]
        assert [d["world"] for d in done] == [4] * 4 and all(d["documents"] == 2 for d in done), done
        ids = [json.loads(line)["source_id"] for r in range(4)
               for line in (work / f"journal.rank{r}.jsonl").read_text().splitlines() if line.strip()]
        assert len(ids) == len(set(ids)) == 8
        assert manifest["rounds"]["1"][kind]["sources"] == 8


@pytest.mark.slow
def test_two_node_training_through_srun_and_torchrun(tmp_path):
    """A user config with nnodes 2: MASTER_ADDR from the first node, srun starts one torchrun
    agent per (fake) node, c10d rendezvous, real tiny pretraining with DP=2 over gloo."""
    (tmp_path / "logs").mkdir()
    src = os.path.join(REPO, "synpro_megatron", "assets", "web_sample.jsonl.gz")
    with gzip.open(src, "rt") as f:
        docs = [next(f) for _ in range(800)]
    (tmp_path / "organic.jsonl").write_text("".join(docs))
    (tmp_path / "loop.yaml").write_text(textwrap.dedent("""
        model: tiny
        input: organic.jsonl
        token_budget: 20480   # 10 steps
        max_rounds: 0
        parallel: {nproc_per_node: 1, nnodes: 2}
        train: {micro_batch: 2, global_batch: 8, eval_interval: 5, save_interval: 100, chunk_evals: 2}
    """))
    run_dir = tmp_path / "run"
    env = job_env(SYNPRO_CONFIG=tmp_path / "loop.yaml", SYNPRO_RUN_DIR=run_dir)
    job = sbatch(["-N", "2", "-t", "30", os.path.join(REPO, "slurm", "synpro_400m.sh")], tmp_path, env)
    info = wait_for([job], timeout=1500, poll=3)[job]
    log = _read(tmp_path / "logs" / f"synpro-400m-{job}.out")
    assert info["JobState"] == "COMPLETED", log[-5000:]
    assert "multi-node: 2 nodes, rendezvous" in log
    assert "srun --nodes=2 --ntasks-per-node=1" in log and "--rdzv-backend=c10d" in log
    assert read_state(run_dir)["stage"] == "done"
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "10"
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == list(range(1, 11))


PIPELINE = textwrap.dedent("""
    import json, os, sys
    import nemo_run as run
    from synpro_megatron.recipes import slurm_executor, synpro_pipeline
    out, with_data = sys.argv[1], sys.argv[2] == "1"
    rd = os.path.join(out, "runs", "p")
    os.makedirs(rd + "/data", exist_ok=True)
    if with_data:
        for ext in (".bin", ".idx"):
            open(rd + "/data/organic" + ext, "w").write("x")
    ex = slurm_executor("ci", "batch", nodes=1, gpus_per_node=1, time="00:10:00", packager=run.Packager(),
                        tunnel=run.LocalTunnel(job_dir=os.path.join(os.environ["NEMORUN_HOME"], "experiments")))
    ex.poll_estimated_start_time = False
    exp = synpro_pipeline("tiny", dir=os.path.join(out, "runs"), name="p", executor=ex, payload="fake",
                          max_steps=40, refresh_at_sample=160)
    with exp:
        exp.run(detach=True)
    ids = {j.id: j.handle.rsplit("/", 1)[-1] for j in exp.jobs}
    json.dump(ids, open(os.path.join(out, "jobs.json"), "w"))
""")
STAGES = ["pretrain", "probe", "generator-rephrase", "generator-reformat", "synthesis-rephrase", "synthesis-reformat",
          "blend", "pretrain-resume"]
UPSTREAM = {"probe": ["pretrain"], "generator-rephrase": ["probe"], "generator-reformat": ["probe"],
            "synthesis-rephrase": ["generator-rephrase"], "synthesis-reformat": ["generator-reformat"],
            "blend": ["synthesis-rephrase", "synthesis-reformat"], "pretrain-resume": ["blend"]}


def submit_pipeline(tmp_path, with_data=True):
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    env = job_env(NEMORUN_HOME=tmp_path / "home", SYNPRO_FSYNC=0)
    r = subprocess.run([sys.executable, str(tmp_path / "pipeline.py"), str(tmp_path), "1" if with_data else "0"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(_read(tmp_path / "jobs.json"))


def test_nemo_pipeline_runs_every_stage_in_dependency_order(tmp_path):
    ids = submit_pipeline(tmp_path)
    assert sorted(ids) == sorted(STAGES)
    seen_deps = {}

    def record_deps(infos):
        for name, jid in ids.items():
            dep = infos[jid].get("Dependency", "(null)")
            if dep != "(null)":
                seen_deps.setdefault(name, dep)

    infos = wait_for(list(ids.values()), timeout=900, poll=1, on_poll=record_deps)
    by_name = {name: infos[jid] for name, jid in ids.items()}
    assert {n: i["JobState"] for n, i in by_name.items()} == {n: "COMPLETED" for n in STAGES}
    for name, info in by_name.items():
        assert info["JobName"] == f"synpro-{name}"
        assert info["KillOInInvalidDependent"] == "Yes"
        for up in UPSTREAM.get(name, []):
            assert info["StartTime"] >= by_name[up]["EndTime"], (name, up)
    # the dependencies Slurm was given (visible while a job waits): afterok on exactly its upstream jobs
    assert {"blend", "pretrain-resume"} <= set(seen_deps)
    for name, dep in seen_deps.items():
        assert sorted(re.findall(r"afterok:(\d+)", dep)) == sorted(ids[u] for u in UPSTREAM[name]), (name, dep)
    rd = tmp_path / "runs" / "p"
    assert (rd / "checkpoints" / "latest").read_text().strip() == "40"
    sched = json.loads(_read(rd / "blend" / "schedule_round_1.json"))
    assert sched["phases"][1]["start"] == 160
    for kind in ("rephrase", "reformat"):
        assert (rd / "synthetic" / "round_1" / f"{kind}.idx").exists()
        assert (rd / "rounds" / "round_1" / "generators" / kind / "generator.json").exists()


def test_failed_upstream_cancels_the_rest_of_the_pipeline(tmp_path):
    ids = submit_pipeline(tmp_path, with_data=False)  # no organic data: the first pretrain job fails
    infos = wait_for(list(ids.values()), timeout=600, poll=1)
    states = {name: infos[jid]["JobState"] for name, jid in ids.items()}
    assert states["pretrain"] == "FAILED"
    assert all(states[n] == "CANCELLED" for n in STAGES[1:]), states


def test_readme_sbatch_lines_work_from_a_fresh_clone():
    """`#SBATCH --output=logs/%x-%j.out` needs logs/ at submit time: the folder ships (tracked)."""
    r = subprocess.run(["git", "ls-files", "logs"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and "logs/.gitignore" in r.stdout.split(), r.stdout + r.stderr
    assert "#SBATCH --output=logs/%x-%j.out" in _read(os.path.join(REPO, "slurm", "synpro_1b.sh"))
