"""`synpro run --config CONFIG.yaml --run-dir DIR`: drive the whole SynPro loop.

Rerunning the same command after a crash or a preemption continues from RUN_DIR/state.json.
Exit codes: 0 done (or --max-stages reached), 1 a stage failed, 2 bad config/state,
143 stopped by SIGTERM/SIGUSR1 after the running stage checkpointed (rerun to continue).
"""
from __future__ import annotations

import json
import os
import sys


def register_cli(sub) -> None:
    p = sub.add_parser("run", help="run the SynPro loop (pretrain -> plateau -> generators -> synthesis -> ...)")
    p.add_argument("--config", required=True, help="loop config, YAML or JSON (see synpro_megatron.loop.config)")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--max-stages", type=int, default=None, help="stop after this many stages (debugging)")
    p.add_argument("--runner", choices=["cli", "fake"], default="cli",
                   help="cli: the real stages; fake: the smoke payload (loop.smoke), stand-in outputs to smoke-test the loop and its "
                        "Slurm/preemption plumbing without training anything")
    p.add_argument("--status", action="store_true", help="print state.json and exit")
    p.add_argument("--overwrite", action="store_true",
                   help="start over: move the run dir's earlier run aside (never deleted); without it a "
                        "rerun continues the run, and a run dir holding something else is refused")
    p.set_defaults(func=run_cli)


def run_cli(args) -> int:
    from .config import ConfigError, LoopConfig
    from .controller import Controller
    from .runner import Interrupted, StageFailed

    from synpro_megatron.errors import UserError, guard_existing_output

    try:
        cfg = LoopConfig.load(args.config)
        if not args.status:
            other = _holds_other_run(args.run_dir)
            guard_existing_output(
                args.run_dir, other or args.overwrite and os.path.isdir(args.run_dir) and bool(os.listdir(args.run_dir)),
                args.overwrite, "run", "checkpoints or metrics but no loop state.json (not a `synpro run` run dir)"
                if other else "a loop run", "use another --run-dir" if other else None)
        if args.runner == "fake":
            from .smoke import SmokeRunner

            runner = SmokeRunner(subprocess=True, echo=print)
        else:
            runner = None
        ctl = Controller(cfg, args.run_dir, runner=runner, echo=lambda m: print(m, flush=True))
    except (ConfigError, ValueError, UserError) as e:
        print(f"synpro run: error: {e}", file=sys.stderr)
        return 2
    if args.status:
        print(json.dumps(ctl.state.to_dict(), indent=2))
        return 0
    try:
        state = ctl.run(max_stages=args.max_stages)
    except ValueError as e:  # another controller holds the run dir, or a bad state.json field
        print(f"synpro run: error: {e}", file=sys.stderr, flush=True)
        return 2
    except Interrupted as e:
        print(f"synpro run: {e}", file=sys.stderr, flush=True)
        return 143
    except StageFailed as e:
        print(f"synpro run: error: {e}", file=sys.stderr, flush=True)
        return 1
    print(f"synpro run: stage {state.stage}, step {state.step}, {state.tokens} tokens, "
          f"{state.rounds_done} synthetic round(s)", flush=True)
    return 0


def _holds_other_run(run_dir: str) -> bool:
    """Checkpoints or metrics with no loop state: a `synpro pretrain` run (or another tool's), which
    the loop would otherwise resume as if it were its own."""
    if not os.path.isdir(run_dir) or os.path.exists(os.path.join(run_dir, "state.json")):
        return False
    return any(os.path.exists(os.path.join(run_dir, n)) for n in ("checkpoints", "metrics.jsonl"))
