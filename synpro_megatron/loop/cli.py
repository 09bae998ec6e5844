"""`synpro run --config CONFIG.yaml --run-dir DIR`: drive the whole SynPro loop.

Rerunning the same command after a crash or a preemption continues from RUN_DIR/state.json.
Exit codes: 0 done (or --max-stages reached), 1 a stage failed, 2 bad config/state,
143 stopped by SIGTERM/SIGUSR1 after the running stage checkpointed (rerun to continue).
"""
from __future__ import annotations

import json
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
    p.set_defaults(func=run_cli)


def run_cli(args) -> int:
    from .config import ConfigError, LoopConfig
    from .controller import Controller
    from .runner import Interrupted, StageFailed

    try:
        cfg = LoopConfig.load(args.config)
        if args.runner == "fake":
            from .smoke import SmokeRunner

            runner = SmokeRunner(subprocess=True, echo=print)
        else:
            runner = None
        ctl = Controller(cfg, args.run_dir, runner=runner, echo=lambda m: print(m, flush=True))
    except (ConfigError, ValueError) as e:
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
