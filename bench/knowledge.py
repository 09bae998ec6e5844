"""Knowledge micro-benchmark: does the SynPro loop beat repetition when the content is fixed?

Corpus: synpro_megatron/eval/knowledge.py (fictional people, one biography each in ONE style).
Per seed, four arms with the same token budget, each a real run of our stages in its own run dir:

  synpro      `synpro run`: pretrain -> plateau -> probe -> GRPO (offline SmolLM2) -> synthesize
              through the gate -> blend -> resume, the influence reward aimed at the reference
              people's probe items.
  repetition  the SynPro run's plateau checkpoint continued on the biographies alone (the demo's
              baseline: until the refresh both runs are the same computation).
  prompted    the same branch point, blended with rephrasings by the untrained SmolLM2 (no RL),
              `synpro synthesize` with the same arguments as the loop's.
  oracle      the same branch point, blended with the template-augmented oracle (several fixed
              styles, permuted sentence order; `synpro prepare` with the run's tokenizer).

The blend after the branch point is the loop's own (loop/blend.py extend_schedule with the same
weights and epoch caps); every pretraining run gets the loop's max_steps x global_batch x seq.
All text is tokenised by a small BPE tokenizer `synpro prepare --train-tokenizer` trains on the
biographies (the generator keeps its own tokenizer).

Measured on every checkpoint of every arm: multiple-choice accuracy on the evaluation people's
probes (`synpro eval --reference eval_mc.jsonl`, phrasings never trained on) and the loss on
held-out rephrasings. Outputs: OUT/seed_S/<arm>/ run dirs, OUT/results.json, OUT/knowledge.png,
OUT/summary.md. Rerunning continues: finished stages are skipped (the loop resumes from its
state.json, pretraining from its checkpoints, evaluations from a per-arm cache).

    python bench/knowledge.py --out runs/knowledge --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

from synpro_megatron.eval import knowledge as kn

ARMS = ("repetition", "synpro", "prompted", "oracle")


def log(msg: str) -> None:
    print(f"[bench knowledge {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def synpro_cmd(*args: str) -> List[str]:
    return [sys.executable, "-m", "synpro_megatron.cli", *args]


def run(cmd: List[str], log_path: str) -> None:
    log(" ".join(cmd[2:]) + f"  (log: {log_path})")
    with open(log_path, "a", encoding="utf-8") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        with open(log_path, encoding="utf-8") as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")


# ---- configuration -------------------------------------------------------------------------------
@dataclass
class BenchConfig:
    people: int = 48
    # people whose biographies give the held-out loss (the plateau signal); pretraining evaluates
    # eval_iters x micro_batch windows of them (the loop does not pass train.extra_args such as
    # --eval-iters on to pretraining yet), so this share is large
    held_out: float = 0.45
    vocab: int = 512
    epochs: float = 80.0  # token budget = epochs x tokens of the trained biographies
    seq_len: int = 128
    global_batch: int = 8
    micro_batch: int = 4
    lr: float = 2e-3
    eval_interval: int = 10
    chunk_evals: int = 3
    eval_every: int = 30  # steps between the checkpoints scored (plus the branch point and the last)
    plateau_threshold: float = 0.02
    grpo_steps: int = 2
    kinds: tuple = ("rephrase",)
    synth_fraction: float = 0.5  # the loop rewrites the biographies the plateau model finds hardest
    organic_weight: float = 0.5
    candidates: int = 1
    max_new_tokens: int = 160


def synth_args(data: Dict[str, str], cfg: BenchConfig) -> List[str]:
    """`synpro synthesize` arguments shared by the SynPro loop and the prompted arm. The run's own
    biographies are passed explicitly (the loop would otherwise read the packaged sample when the
    data is prepared outside the run dir), and the pretraining tokenizer for the output .bin."""
    return ["--source-jsonl", data["train_bios"], "--tokenizer", data["tokenizer"],
            "--select", f"top-loss:{cfg.synth_fraction}", "--doc-losses", data["doc_losses"],
            "--max-new-tokens", str(cfg.max_new_tokens), "--max-source-tokens", "300", "--batch-size", "8",
            "--temperature", "0.5", "--candidates", str(cfg.candidates), "--repetition-penalty", "1.0", "--few-shot"]


def loop_config(data: Dict[str, str], cfg: BenchConfig, seed: int) -> dict:
    share = (1.0 - cfg.organic_weight) / len(cfg.kinds)
    return {
        "model": "tiny", "data": data["prefix"], "token_budget": data["token_budget"], "max_rounds": 1, "seed": seed,
        "parallel": {"tp": 1, "pp": 1, "nproc_per_node": 1},
        "train": {"micro_batch": cfg.micro_batch, "global_batch": cfg.global_batch, "seq_length": cfg.seq_len,
                  "lr": cfg.lr, "eval_interval": cfg.eval_interval, "save_interval": cfg.eval_interval,
                  "chunk_evals": cfg.chunk_evals, "tokenizer": data["tokenizer"]},
        # the loss on the held-out people's biographies: it flattens once the format is learnt
        "plateau": {"metric": "heldout_loss", "smoothing": "ema", "ema_alpha": 0.5, "window": 2,
                    "rel_threshold": cfg.plateau_threshold, "patience": 1, "min_steps_after_refresh": 0},
        "generators": {
            "kinds": list(cfg.kinds),
            "probe_args": ["--reference", data["reference"], "--doc-losses"],
            # one prompt group per micro-step: two groups at once (8 x ~560 tokens x a 49k-word output
            # layer) took 7 GB and the OOM killer stopped it on this shared machine
            "train_args": ["--steps", str(cfg.grpo_steps), "--num-prompts", "2", "--num-generations", "4",
                           "--prompts-per-device", "1", "--grad-accum", "2",
                           "--max-source-tokens", "160", "--max-completion-length", str(cfg.max_new_tokens),
                           "--source-jsonl", data["train_bios"], "--reference-jsonl", data["reference"], "--few-shot"],
            "synth_args": synth_args(data, cfg),
        },
        # the synthetic sets are small next to the budget: no epoch cap, in every arm alike
        "blend": {"organic": cfg.organic_weight, "new_round": {k: share for k in cfg.kinds}, "earlier_rounds": 0.0,
                  "max_epochs": None},
    }


# ---- data ---------------------------------------------------------------------------------------
def prepare_data(seed_dir: str, cfg: BenchConfig, seed: int) -> Dict[str, str]:
    ddir = os.path.join(seed_dir, "data")
    kcfg = kn.KnowledgeConfig(people=cfg.people, seed=seed, held_out=cfg.held_out)
    paths = kn.write_benchmark(ddir, kcfg)  # pure function of the seed: rewriting is harmless
    prefix = os.path.join(ddir, "bios")
    if not os.path.exists(prefix + ".meta.json"):
        run(synpro_cmd("prepare", "--input", paths["bios.jsonl"], "--output", prefix, "--held-out", str(kcfg.held_out),
                       "--seed", str(kcfg.prepare_seed), "--train-tokenizer", str(cfg.vocab), "--workers", "1"),
            os.path.join(ddir, "prepare.log"))
    with open(prefix + ".meta.json", encoding="utf-8") as f:
        meta = json.load(f)
    with open(prefix + ".docids.json", encoding="utf-8") as f:
        trained = set(json.load(f))
    train_bios = os.path.join(ddir, "train_bios.jsonl")  # the synthesis source: held-out people stay unseen
    with open(paths["bios.jsonl"], encoding="utf-8") as f, open(train_bios + ".tmp", "w", encoding="utf-8") as g:
        g.writelines(line for line in f if json.loads(line)["id"] in trained)
    os.replace(train_bios + ".tmp", train_bios)
    budget = int(cfg.epochs * meta["num_tokens"])
    budget -= budget % (cfg.seq_len * cfg.global_batch)
    return {"dir": ddir, "prefix": prefix, "tokenizer": meta["tokenizer"], "train_bios": train_bios,
            "reference": paths["reference.jsonl"], "eval_mc": paths["eval_mc.jsonl"],
            "heldout": paths["heldout_rephrasings.jsonl"], "oracle": paths["oracle.jsonl"],
            "token_budget": budget, "organic_tokens": meta["num_tokens"],
            # written by the loop's probe at the plateau; the prompted arm rewrites the same documents
            "doc_losses": os.path.join(seed_dir, "synpro", "rounds", "round_1", "probe", "doc_losses.jsonl")}


# ---- arms ---------------------------------------------------------------------------------------
def refresh_step(synpro_dir: str) -> Optional[int]:
    from synpro_megatron.demo import _refresh_step

    return _refresh_step(synpro_dir)


def arm_pretrain_config(synpro_dir: str, arm_dir: str, synthetic: Dict[str, str], schedule: Optional[str]):
    """The PretrainConfig of a branch arm: the SynPro run's own (model, data, seed, max_steps,
    batch, sequence length: the token budget) with only the run dir and the blend replaced."""
    from synpro_megatron.pretrain.config import PretrainConfig

    with open(os.path.join(synpro_dir, "pretrain_config.json"), encoding="utf-8") as f:
        base = json.load(f)
    return PretrainConfig.from_dict({**base, "run_dir": arm_dir, "blend_schedule": schedule, "synthetic": synthetic,
                                     "resume": True, "stop_at_sample": None})


def arm_token_budget(pcfg) -> int:
    return pcfg.max_steps * pcfg.global_batch * pcfg.model_config().seq_length


def branch_from(synpro_dir: str, arm_dir: str, step: int) -> None:
    """Copy the SynPro run's checkpoint at `step` and its metrics up to it (the shared prefix)."""
    from synpro_megatron.pretrain.checkpoint import checkpoint_dir, checkpoint_root

    if os.path.exists(os.path.join(checkpoint_root(arm_dir), "latest")):
        return
    os.makedirs(arm_dir, exist_ok=True)
    dst = checkpoint_dir(arm_dir, step)
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(checkpoint_dir(synpro_dir, step), dst, ignore=shutil.ignore_patterns("influence"))
    with open(os.path.join(synpro_dir, "metrics.jsonl"), encoding="utf-8") as f:
        kept = [line for line in f if json.loads(line).get("step", 0) <= step]
    with open(os.path.join(arm_dir, "metrics.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(kept)
    with open(os.path.join(checkpoint_root(arm_dir), "latest"), "w", encoding="utf-8") as f:
        f.write(f"{step}\n")


def blend_for(synpro_dir: str, arm_dir: str, loop_cfg, start_step: int, prefixes: Dict[str, str]) -> str:
    """The loop's round-1 schedule (same weights, same caps rule) over this arm's synthetic sets."""
    from synpro_megatron.loop.blend import epoch_caps, extend_schedule
    from synpro_megatron.rundir import source_name

    start = start_step * loop_cfg.train.global_batch
    kinds = list(prefixes)
    caps = epoch_caps({source_name(1, k): p for k, p in prefixes.items()}, loop_cfg.seq_length(),
                      loop_cfg.total_steps() * loop_cfg.train.global_batch - start, loop_cfg.blend.max_epochs)
    schedule = extend_schedule(None, start, 1, kinds, loop_cfg.blend, caps)
    path = os.path.join(arm_dir, "blend_schedule.json")
    schedule.save(path)
    return path


def finished(run_dir: str, pcfg) -> bool:
    from synpro_megatron.pretrain.checkpoint import latest_checkpoint

    latest = latest_checkpoint(run_dir)
    return bool(latest) and latest.rstrip("/").endswith(f"iter_{pcfg.max_steps:07d}")


def pretrain_arm(arm_dir: str, pcfg) -> None:
    from synpro_megatron.pretrain.launch import config_to_args

    if finished(arm_dir, pcfg):
        return
    with open(os.path.join(arm_dir, "pretrain_config.json"), "w", encoding="utf-8") as f:
        f.write(pcfg.to_json())
    run([sys.executable, "-m", "synpro_megatron.pretrain", *config_to_args(pcfg)], os.path.join(arm_dir, "pretrain.log"))


def run_arms(seed_dir: str, data: Dict[str, str], cfg: BenchConfig, seed: int, arms) -> Dict[str, str]:
    from synpro_megatron.loop.config import LoopConfig
    from synpro_megatron.rundir import source_name

    synpro_dir = os.path.join(seed_dir, "synpro")
    cfg_path = os.path.join(seed_dir, "synpro_loop.json")
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(loop_config(data, cfg, seed), f, indent=1)
    loop_cfg = LoopConfig.load(cfg_path)
    if "synpro" in arms:
        run(synpro_cmd("run", "--config", cfg_path, "--run-dir", synpro_dir), os.path.join(seed_dir, "synpro.log"))
    # without the synpro arm: only the branch arms, from a loop that has passed its plateau (they
    # need its plateau checkpoint and probe only, so they can run while the loop trains generators)
    step = refresh_step(synpro_dir)
    if step is None:
        raise RuntimeError(f"{synpro_dir}: the loop never refreshed (no plateau before the budget ran out): "
                           f"lower --plateau-threshold or raise --epochs")
    dirs = {"synpro": synpro_dir}
    for arm in arms:
        if arm == "synpro":
            continue
        arm_dir = os.path.join(seed_dir, arm)
        dirs[arm] = arm_dir
        branch_from(synpro_dir, arm_dir, step)
        prefixes: Dict[str, str] = {}
        if arm == "prompted":
            for kind in cfg.kinds:  # the untrained generator, the loop's synthesis arguments
                prefix = os.path.join(arm_dir, "synthetic", "round_1", kind)
                if not os.path.exists(prefix + ".bin"):
                    run(synpro_cmd("synthesize", "--kind", kind, "--round", "1", "--run-dir", arm_dir,
                                   *synth_args(data, cfg)), os.path.join(arm_dir, "synthesize.log"))
                prefixes[kind] = prefix
        elif arm == "oracle":
            prefix = os.path.join(arm_dir, "synthetic", "oracle")
            if not os.path.exists(prefix + ".meta.json"):
                os.makedirs(os.path.dirname(prefix), exist_ok=True)
                run(synpro_cmd("prepare", "--input", data["oracle"], "--output", prefix, "--tokenizer", data["tokenizer"],
                               "--held-out", "0", "--workers", "1"), os.path.join(arm_dir, "prepare.log"))
            prefixes = {k: prefix for k in cfg.kinds}  # the oracle fills every synthetic slot of the blend
        prefixes = {k: p for k, p in prefixes.items() if os.path.getsize(p + ".bin")}
        schedule = blend_for(synpro_dir, arm_dir, loop_cfg, step, prefixes) if prefixes else None
        synthetic = {source_name(1, k): p for k, p in prefixes.items()}
        pretrain_arm(arm_dir, arm_pretrain_config(synpro_dir, arm_dir, synthetic, schedule))
    return dirs


# ---- evaluation ---------------------------------------------------------------------------------
def evaluate_arm(run_dir: str, data: Dict[str, str], every: int, also: Optional[int] = None) -> List[dict]:
    """Accuracy on unseen phrasings and held-out rephrasing loss at every checkpoint (cached)."""
    from synpro_megatron.eval.multiple_choice import evaluate_checkpoint, tokens_at_step
    from synpro_megatron.pretrain.checkpoint import checkpoint_root

    cache_path = os.path.join(run_dir, "knowledge_eval.jsonl")
    done = {}
    if os.path.exists(cache_path):
        with open(cache_path, encoding="utf-8") as f:
            done = {r["step"]: r for r in map(json.loads, f)}
    with open(data["heldout"], encoding="utf-8") as f:
        heldout = [json.loads(line)["text"] for line in f]
    steps = sorted(int(d[len("iter_"):]) for d in os.listdir(checkpoint_root(run_dir)) if d.startswith("iter_"))
    steps = [s for s in steps if s % every == 0 or s == steps[-1] or s == also]
    for step in steps:
        if step in done:
            continue
        ckpt = os.path.join(checkpoint_root(run_dir), f"iter_{step:07d}")
        rec = evaluate_checkpoint(ckpt, reference=data["eval_mc"], record_in_run=True, progress=False)
        loss = kn.heldout_loss(ckpt, heldout)
        done[step] = {"step": step, "tokens": tokens_at_step(run_dir, step) or rec.get("tokens"),
                      "accuracy": rec["macro_acc"], "acc_norm": rec["macro_acc_norm"], "heldout_loss": loss,
                      "tasks": {t: v["acc"] for t, v in rec["tasks"].items()}}
        with open(cache_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(done[step]) + "\n")
    return [done[s] for s in sorted(done)]


def synthesis_stats(run_dir: str) -> Dict[str, dict]:
    """Gate yield and contamination (probe phrasings in generated text) per synthetic set."""
    out = {}
    path = os.path.join(run_dir, "synthetic", "manifest.json")
    if not os.path.exists(path):
        return out
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    for k, kinds in manifest.get("rounds", {}).items():
        for kind, e in kinds.items():
            out[f"round{k}_{kind}"] = {"kept": e["documents"], "sources": e["sources"], "tokens": e["tokens"]}
    return out


def synthetic_texts(run_dir: str, tokenizer: str) -> List[str]:
    from synpro_megatron.data.indexed import read_documents
    from synpro_megatron.data.tokenizer import load_tokenizer

    tok, texts = load_tokenizer(tokenizer), []
    root = os.path.join(run_dir, "synthetic")
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.endswith(".idx") and "round_" in dirpath:
                texts += [tok.detokenize(d.tolist()) for d in read_documents(os.path.join(dirpath, name[:-4]))]
    return texts


# ---- summary ------------------------------------------------------------------------------------
def summarise(results: dict) -> str:
    arms = [a for a in ARMS if any(a in r["arms"] for r in results["seeds"].values())]
    final = {a: [r["arms"][a]["curve"][-1] for r in results["seeds"].values() if a in r["arms"]] for a in arms}

    def stat(vals):
        m = statistics.mean(vals)
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return m, sd

    lines = ["| arm | seeds | final accuracy (mean ± sd) | per seed | held-out rephrasing loss | tokens |",
             "|---|---|---|---|---|---|"]
    means = {}
    for a in arms:
        acc = [c["accuracy"] for c in final[a]]
        loss = [c["heldout_loss"] for c in final[a]]
        toks = sorted({c["tokens"] for c in final[a]})
        means[a] = stat(acc)[0]
        lines.append(f"| {a} | {len(acc)} | {stat(acc)[0]:.3f} ± {stat(acc)[1]:.3f} | "
                     f"{', '.join(f'{v:.3f}' for v in acc)} | {stat(loss)[0]:.3f} ± {stat(loss)[1]:.3f} | "
                     f"{', '.join(f'{t:,}' for t in toks)} |")
    if {"repetition", "oracle", "synpro"} <= set(means):
        gap = means["oracle"] - means["repetition"]
        frac = (means["synpro"] - means["repetition"]) / gap if gap else float("nan")
        lines.append(f"\nFraction of the repetition→oracle accuracy gap closed by SynPro: {frac:.2f} "
                     f"(gap {gap:+.3f})")
        if "prompted" in means:
            fp = (means["prompted"] - means["repetition"]) / gap if gap else float("nan")
            lines.append(f"Fraction closed by prompted-only rephrasing: {fp:.2f}")
    lines.append("\n| seed | refresh step | synthetic sets (kept/sources, tokens) | probe phrasings in generated text |")
    lines.append("|---|---|---|---|")
    for seed, r in results["seeds"].items():
        syn = "; ".join(f"{arm}/{name}: {s['kept']}/{s['sources']}, {s['tokens']:,}"
                        for arm in ("synpro", "prompted") for name, s in r.get("synthesis", {}).get(arm, {}).items())
        lines.append(f"| {seed} | {r['refresh_step']} | {syn} | {r.get('contamination', {})} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, out: str) -> str:
    from synpro_megatron.eval import plots

    plt = plots._pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"repetition": "tab:gray", "synpro": "tab:blue", "prompted": "tab:orange", "oracle": "tab:green"}
    for seed, r in results["seeds"].items():
        for arm, a in r["arms"].items():
            xs = [c["tokens"] for c in a["curve"]]
            label = arm if seed == next(iter(results["seeds"])) else None
            axes[0].plot(xs, [c["accuracy"] for c in a["curve"]], color=colors[arm], alpha=0.7, label=label)
            axes[1].plot(xs, [c["heldout_loss"] for c in a["curve"]], color=colors[arm], alpha=0.7, label=label)
        if r["refresh_tokens"] is not None:
            for ax in axes:  # the plateau that started the refresh: where the arms branch
                ax.axvline(r["refresh_tokens"], color="k", ls=":", lw=0.8)
    axes[0].set_ylabel("accuracy on unseen phrasings")
    axes[1].set_ylabel("held-out rephrasing loss (nats/token)")
    for ax in axes:
        ax.set_xlabel("tokens (dotted: plateau → refresh)")
        ax.legend()
    return plots.save_figure(fig, out)


def write_outputs(results: dict, out: str) -> str:
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    summary = summarise(results)
    with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as f:
        f.write(summary)
    plot(results, os.path.join(out, "knowledge.png"))
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/knowledge")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    for name, value in BenchConfig().__dict__.items():
        if isinstance(value, tuple):
            p.add_argument(f"--{name.replace('_', '-')}", nargs="+", default=list(value))
        else:
            p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = p.parse_args(argv)
    # one thread per process: on a shared 2-core machine two OpenMP threads spin against other
    # jobs (bench/RESULTS.md, synthesis throughput); every stage below inherits this
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    cfg = BenchConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in vars(args).items()
                         if k in BenchConfig().__dict__})
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    results = {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()}, "seeds": {}}
    for seed in args.seeds:
        seed_dir = os.path.join(out, f"seed_{seed}")
        os.makedirs(seed_dir, exist_ok=True)
        data = prepare_data(seed_dir, cfg, seed)
        log(f"seed {seed}: budget {data['token_budget']:,} tokens ({cfg.epochs:g} epochs of "
            f"{data['organic_tokens']:,} organic tokens)")
        dirs = run_arms(seed_dir, data, cfg, seed, args.arms)
        step = refresh_step(dirs["synpro"])
        from synpro_megatron.eval.multiple_choice import tokens_at_step

        r = {"refresh_step": step, "refresh_tokens": tokens_at_step(dirs["synpro"], step) if step else None,
             "token_budget": data["token_budget"], "arms": {}, "synthesis": {}}
        for arm in args.arms:
            r["arms"][arm] = {"run_dir": os.path.relpath(dirs[arm], out), "curve": evaluate_arm(dirs[arm], data, cfg.eval_every, step)}
        gen_texts = []
        for arm in ("synpro", "prompted"):
            if arm in dirs:
                r["synthesis"][arm] = synthesis_stats(dirs[arm])
                gen_texts += synthetic_texts(dirs[arm], data["tokenizer"])
        r["contamination"] = kn.contaminated_fragments(gen_texts)
        results["seeds"][str(seed)] = r
        log(f"seed {seed} done ({time.time() - t0:.0f} s): " + ", ".join(
            f"{a}={v['curve'][-1]['accuracy']:.3f}" for a, v in r["arms"].items()))
        results["wall_s"] = round(time.time() - t0, 1)
        summary = write_outputs(results, out)  # after every seed: a partial result is a result
    print(summary)
    log(f"finished in {time.time() - t0:.0f} s; {out}/summary.md, {out}/knowledge.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
