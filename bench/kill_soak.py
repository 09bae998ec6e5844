"""Kill -9 soak of the real SynPro loop (`synpro run`, CLI stages, no fakes).

1. An uninterrupted reference run of a micro loop config (demo-like: tiny GPT, probe, one GRPO
   step per generator on the offline SmolLM2, a small synthetic round, blended pretraining).
2. The soak run: the same command, killed with SIGKILL (the controller and every stage process,
   as a node failure would) at random points spread over the reference run's stages, and rerun
   after each kill; after the last kill it runs to the end.
3. Compare: state.json, the loop log (minus wall times), the blend schedules, every synthetic
   round's .bin/.idx bytes, and the metrics (per step, the later line of a re-logged step winning;
   timing fields left out) against the reference.

    nice -n 10 python bench/kill_soak.py --kills 20 --out runs/kill_soak

Writes OUT/result.json and prints a summary; the result goes to bench/RESULTS.md by hand.
Kill points: each one is (a stage start line of the reference run, a fraction of that stage's
reference duration); the soak waits for that stage line, then for the fraction, then kills.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import signal
import subprocess
import sys
import threading
import time

from synpro_megatron.demo import _write_pool
from synpro_megatron.pretrain.data import DEFAULT_WEB_SAMPLE

TIMING_FIELDS = {"tokens_per_s", "step_time_s", "time"}


def micro_config(pool: str, run_dir: str) -> dict:
    """The demo's loop at the smallest scale that still runs every stage once."""
    doc_losses = os.path.join(run_dir, "rounds", "round_1", "probe", "doc_losses.jsonl")
    return {
        "model": "tiny", "input": pool, "held_out": 0.15, "token_budget": 64 * 8 * 24, "max_rounds": 1,
        "seed": 1234, "parallel": {"tp": 1, "pp": 1, "nproc_per_node": 1},
        "train": {"micro_batch": 4, "global_batch": 8, "seq_length": 64, "lr": 2e-3, "eval_interval": 4,
                  "save_interval": 2, "chunk_evals": 2},
        # always flat: the first check that can see a plateau starts round 1
        "plateau": {"metric": "reference_loss", "smoothing": "ema", "ema_alpha": 0.5, "window": 1,
                    "rel_threshold": 10.0, "patience": 1, "min_steps_after_refresh": 0},
        "generators": {
            "kinds": ["rephrase", "reformat"],
            "probe_args": ["--doc-losses"],
            "train_args": ["--steps", "1", "--num-prompts", "2", "--num-generations", "2",
                           "--max-source-tokens", "48", "--max-completion-length", "32", "--source-jsonl", pool],
            "synth_args": ["--select", "top-loss:0.1", "--doc-losses", doc_losses, "--max-new-tokens", "48",
                           "--max-source-tokens", "96", "--batch-size", "2", "--temperature", "0.5",
                           "--few-shot"],
        },
        "blend": {"organic": 0.6, "new_round": {"rephrase": 0.2, "reformat": 0.2}, "earlier_rounds": 0.0},
    }


def _env() -> dict:
    # one thread: identical arithmetic in every run, and fair to a shared machine
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
                PYTHONUNBUFFERED="1")


def _command(cfg_path: str, run_dir: str) -> list:
    return [sys.executable, "-m", "synpro_megatron.cli", "run", "--config", cfg_path, "--run-dir", run_dir]


class Attempt:
    """One `synpro run` in its own session (so SIGKILL reaches every stage process), its stdout
    read line by line with the time each stage line appeared."""

    def __init__(self, cmd, log_path):
        self.log = open(log_path, "a", encoding="utf-8")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=_env(), start_new_session=True)
        self.stage_lines = []  # (time, line)
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.log.write(line)
            self.log.flush()
            if line.startswith("[synpro loop] stage "):
                with self.cond:
                    self.stage_lines.append((time.time(), line.strip()))
                    self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_for_stage(self, line: str) -> bool:
        with self.cond:
            while True:
                if any(l == line for _, l in self.stage_lines):
                    return True
                if self.proc.poll() is not None:
                    return False
                self.cond.wait(1.0)

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def wait(self):
        rc = self.proc.wait()
        time.sleep(0.2)
        return rc


def reference_run(cfg_path, run_dir, log):
    t0 = time.time()
    a = Attempt(_command(cfg_path, run_dir), log)
    rc = a.wait()
    if rc != 0:
        raise SystemExit(f"reference run failed (exit {rc}); see {log}")
    end = time.time()
    stages = []
    for i, (t, line) in enumerate(a.stage_lines):
        nxt = a.stage_lines[i + 1][0] if i + 1 < len(a.stage_lines) else end
        stages.append({"line": line, "start_s": t - t0, "duration_s": nxt - t})
    return {"wall_s": end - t0, "stages": stages}


def kill_points(stages, kills: int, rng: random.Random):
    """`kills` points spread over the stages in proportion to their duration, in run order."""
    total = sum(s["duration_s"] for s in stages)
    points = []
    for _ in range(kills):
        x = rng.uniform(0, total)
        for i, s in enumerate(stages):
            if x < s["duration_s"] or i == len(stages) - 1:
                points.append((i, min(x, s["duration_s"]) / max(s["duration_s"], 1e-9)))
                break
            x -= s["duration_s"]
    return sorted(points)


def soak_run(cfg_path, run_dir, log, reference, points, deadline):
    kills = []
    for stage_index, frac in points:
        if time.time() > deadline:
            break
        stage = reference["stages"][stage_index]
        a = Attempt(_command(cfg_path, run_dir), log)
        if not a.wait_for_stage(stage["line"]):
            rc = a.wait()
            if rc == 0:  # the loop finished before reaching the stage (it was passed already)
                break
            raise SystemExit(f"soak attempt exited {rc} before stage {stage['line']!r}; see {log}")
        time.sleep(frac * stage["duration_s"])
        alive = a.proc.poll() is None
        a.kill()
        with open(os.path.join(run_dir, "state.json"), encoding="utf-8") as f:
            st = json.load(f)
        kills.append({"stage": stage["line"], "after_s": round(frac * stage["duration_s"], 2),
                      "killed_running": alive, "state_stage": st.get("stage")})
        print(f"kill {len(kills)}: {stage['line']} +{frac * stage['duration_s']:.1f}s "
              f"(state: {st.get('stage')})", flush=True)
    a = Attempt(_command(cfg_path, run_dir), log)
    rc = a.wait()
    if rc != 0:
        raise SystemExit(f"final soak attempt exited {rc}; see {log}")
    return kills


# ------------------------------------------------------------------ comparison

def _jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _strip(rec):
    return {k: v for k, v in rec.items() if k not in TIMING_FIELDS}


def _metrics_by_step(run_dir):
    by = {}
    for rec in _jsonl(os.path.join(run_dir, "metrics.jsonl")):
        by[(rec.get("kind"), rec.get("step"))] = _strip(rec)
    return by


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# run-specific, not state: wall times, throughput, creation stamps
VOLATILE = TIMING_FIELDS | {"created", "generated_tokens_per_s", "generation_seconds", "timeline", "seconds", "reference_seconds"}


def _normalised(value, run_dir):
    """JSON with the run's own folder replaced by <RUN> and volatile fields left out."""
    if isinstance(value, dict):
        return {k: _normalised(v, run_dir) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_normalised(v, run_dir) for v in value]
    if isinstance(value, str):
        return value.replace(run_dir, "<RUN>")
    return value


def _content(path, run_dir):
    if path.endswith(".jsonl"):
        return [_normalised(r, run_dir) for r in _jsonl(path)]
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            return _normalised(json.load(f), run_dir)
    return _digest(path)


def compare(ref_dir, soak_dir) -> dict:
    """Every output of the loop but checkpoints' shards, logs and caches: state.json, the loop log,
    the metrics, the probe's outputs, the trained generators (weights by sha256), the synthetic
    rounds (.bin/.idx bytes, provenance, dropped outputs, journals' job files) and the blend."""
    diffs, compared = [], []
    ref_dir, soak_dir = os.path.abspath(ref_dir), os.path.abspath(soak_dir)
    compared.append("metrics.jsonl (per step, later line wins)")
    if _metrics_by_step(ref_dir) != _metrics_by_step(soak_dir):
        diffs.append("metrics.jsonl")
    wanted = [os.path.join(ref_dir, n) for n in ("state.json", "loop_log.jsonl")]
    for sub in ("synthetic", "blend", "rounds"):
        for root, _, files in os.walk(os.path.join(ref_dir, sub)):
            wanted += [os.path.join(root, n) for n in sorted(files)
                       if ".tmp" not in n and not n.startswith(".") and n.endswith(
                           (".bin", ".idx", ".json", ".jsonl", ".safetensors"))]
    for path in wanted:
        rel = os.path.relpath(path, ref_dir)
        other = os.path.join(soak_dir, rel)
        compared.append(rel)
        if not os.path.exists(other):
            diffs.append(f"{rel} (missing)")
        elif _content(path, ref_dir) != _content(other, soak_dir):
            diffs.append(rel)
    return {"compared": compared, "differences": diffs}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--out", default="runs/kill_soak")
    ap.add_argument("--docs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill points")
    ap.add_argument("--budget-minutes", type=float, default=None, help="stop killing after this long")
    ap.add_argument("--reuse-reference", action="store_true", help="keep OUT/reference if it is complete")
    ap.add_argument("--compare-only", action="store_true", help="only compare OUT/reference and OUT/soak again")
    args = ap.parse_args()

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    pool = os.path.join(out, "pool.jsonl")
    if not os.path.exists(pool):
        _write_pool(DEFAULT_WEB_SAMPLE, pool, args.docs, 1234)
    ref_dir, soak_dir = os.path.join(out, "reference"), os.path.join(out, "soak")
    cfgs = {}
    for name, d in (("reference", ref_dir), ("soak", soak_dir)):
        cfgs[name] = os.path.join(out, f"{name}.json")
        with open(cfgs[name], "w") as f:
            json.dump(micro_config(pool, d), f, indent=1)

    if args.compare_only:
        with open(os.path.join(out, "result.json")) as f:
            result = json.load(f)
        result.update(compare(ref_dir, soak_dir))
        result["survived"] = result["kills_done"] if not result["differences"] else 0
        with open(os.path.join(out, "result.json"), "w") as f:
            json.dump(result, f, indent=1)
        print(json.dumps({k: v for k, v in result.items() if k != "kills"}, indent=1))
        return 0 if not result["differences"] else 1

    ref_info = os.path.join(out, "reference_timing.json")
    if args.reuse_reference and os.path.exists(ref_info):
        with open(ref_info) as f:
            reference = json.load(f)
    else:
        import shutil

        shutil.rmtree(ref_dir, ignore_errors=True)
        reference = reference_run(cfgs["reference"], ref_dir, os.path.join(out, "reference.log"))
        with open(ref_info, "w") as f:
            json.dump(reference, f, indent=1)
    print(f"reference run: {reference['wall_s']:.0f} s, {len(reference['stages'])} stage runs", flush=True)

    import shutil

    shutil.rmtree(soak_dir, ignore_errors=True)
    points = kill_points(reference["stages"], args.kills, random.Random(args.seed))
    deadline = time.time() + (args.budget_minutes * 60 if args.budget_minutes else 1e9)
    t1 = time.time()
    kills = soak_run(cfgs["soak"], soak_dir, os.path.join(out, "soak.log"), reference, points, deadline)
    result = compare(ref_dir, soak_dir)
    result.update(kills_planned=args.kills, kills_done=len(kills), kills=kills,
                  survived=len(kills) if not result["differences"] else 0,
                  reference_wall_s=round(reference["wall_s"], 1), soak_wall_s=round(time.time() - t1, 1),
                  machine=f"{platform.node()} {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "kills"}, indent=1))
    return 0 if not result["differences"] else 1


if __name__ == "__main__":
    sys.exit(main())
