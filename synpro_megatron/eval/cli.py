"""`synpro eval`, `synpro effective-tokens`, `synpro report`.

Exit codes: 0 success, 2 bad input (the message names the file, line or field).
"""
from __future__ import annotations

import json
import os
import sys
import warnings

from synpro_megatron.eval.effective_tokens import METRICS


def register_cli(sub) -> None:
    p = sub.add_parser("eval", help="zero-shot multiple-choice accuracy of a checkpoint on the reference set")
    p.add_argument("--checkpoint", required=True, help="checkpoint dir (iter_N), checkpoints/ or a run dir (its latest)")
    p.add_argument("--tasks", nargs="+", default=None, help="tasks to score (default: every multiple-choice task)")
    p.add_argument("--limit-per-task", type=int, default=None, help="first N examples of each task")
    p.add_argument("--reference", default=None, help="reference JSONL (default: packaged reference_qa.jsonl)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--output", default=None, help="also write the result as JSON here")
    p.add_argument("--no-record", action="store_true", help="do not append to RUN_DIR/eval_mc.jsonl")
    p.set_defaults(func=eval_cli)

    p = sub.add_parser("effective-tokens",
                       help="fit loss vs unique tokens on baseline runs; how many unique tokens a SynPro run is worth")
    p.add_argument("--baseline", action="append", default=[], metavar="RUN_DIR:UNIQUE_TOKENS",
                   help="a repetition (or unique-data) run and its unique-token budget, e.g. runs/rep_800M:800M "
                        "(repeatable, >= 3 budgets); without :TOKENS the run's prepared dataset size is used")
    p.add_argument("--table", default=None, help="baseline points from a CSV (unique_tokens,loss[,label]) or JSON file")
    p.add_argument("--oracle", default=None, metavar="RUN_DIR",
                   help="a run on unique data: each of its evals is a point (tokens seen, loss)")
    p.add_argument("--synpro", required=True, metavar="RUN_DIR[:UNIQUE_TOKENS]", help="the SynPro run to place")
    p.add_argument("--repetition", default=None, metavar="RUN_DIR[:UNIQUE_TOKENS]",
                   help="also place this repetition run; reports SynPro / repetition effective tokens "
                        "(use with an --oracle or unique-data --table fit)")
    p.add_argument("--metric", choices=METRICS, default="reference_loss")
    p.add_argument("--last-k", type=int, default=1, help="mean over each run's last K evaluations (default 1: final)")
    p.add_argument("--out", default=None, help="PNG plot of the fit")
    p.add_argument("--json", dest="json_out", default=None, help="write the result as JSON here")
    p.set_defaults(func=effective_tokens_cli)

    p = sub.add_parser("report", help="write RUN_DIR/report/report.md and figures from a run's logs")
    p.add_argument("run_dir", help="a SynPro run dir, or a demo dir holding synpro/ and repetition/")
    p.add_argument("--baseline", default=None, help="a repetition run dir to compare with")
    p.add_argument("--out-dir", default=None, help="default: RUN_DIR/report")
    p.set_defaults(func=report_cli)


def _fail(command: str, err: Exception) -> int:
    print(f"synpro {command}: error: {err}", file=sys.stderr)
    return 2


def eval_cli(args) -> int:
    from synpro_megatron.eval.multiple_choice import evaluate_checkpoint, format_table

    try:
        record = evaluate_checkpoint(args.checkpoint, tasks=args.tasks, limit_per_task=args.limit_per_task,
                                     reference=args.reference, output=args.output,
                                     record_in_run=not args.no_record, batch_size=args.batch_size)
    except (OSError, ValueError) as e:
        return _fail("eval", e)
    print(f"{args.checkpoint}: {record['checkpoint']} (step {record['step']})")
    print(format_table(record))
    for where in (args.output, record.get("appended_to")):
        if where:
            print(f"wrote {where}")
    return 0


def effective_tokens_cli(args) -> int:
    from synpro_megatron.eval import effective_tokens as et
    from synpro_megatron.eval.plots import human_tokens, plot_effective_tokens

    def place(spec):
        run_dir, tokens = et.parse_run_spec(spec)
        if not os.path.isdir(run_dir):
            raise FileNotFoundError(f"run directory not found: {run_dir}")
        tokens = tokens if tokens is not None else et.run_unique_tokens(run_dir)
        return run_dir, tokens, et.final_eval_loss(run_dir, args.metric, args.last_k)

    try:
        points, labels = [], []
        for spec in args.baseline:
            run_dir, tokens, loss = place(spec)
            points.append((tokens, loss))
            labels.append(os.path.basename(os.path.normpath(run_dir)))  # the run's folder name
        if args.table:
            for u, loss, label in et.load_points_table(args.table):
                points.append((u, loss))
                labels.append(label)
        if args.oracle:
            for u, loss, label in et.oracle_points(args.oracle, args.metric):
                points.append((u, loss))
                labels.append(label)
        if not points:
            raise ValueError("no baseline points: give --baseline RUN_DIR:TOKENS (>= 3), --table or --oracle")
        s_dir, s_tokens, s_loss = place(args.synpro)
        rep = place(args.repetition) if args.repetition else None
        name = lambda path: os.path.basename(os.path.normpath(path))  # noqa: E731
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")  # printed below from result.warnings, once each
            result = et.estimate_effective_tokens(
                points, (s_tokens, s_loss), (rep[1], rep[2]) if rep else None, labels=labels,
                synpro_label=name(s_dir), repetition_label=name(rep[0]) if rep else "repetition",
                metric=args.metric, last_k=args.last_k)
    except (OSError, ValueError) as e:
        return _fail("effective-tokens", e)
    f = result.fit
    print(f"fit over {f.n} baseline points ({human_tokens(f.u_min)}..{human_tokens(f.u_max)} unique tokens), "
          f"{args.metric}{'' if args.last_k == 1 else f' (mean of last {args.last_k} evals)'}:")
    print(f"  L(U) = {f.E:.4f} + {f.A:.4g} / U^{f.alpha:.4f}    (rmse {f.rmse:.4f})")
    print(f"{result.synpro['label']}: loss {result.synpro['loss']:.4f} on {human_tokens(result.synpro['unique_tokens'])} "
          f"unique tokens -> worth {human_tokens(result.effective_unique_tokens)} unique tokens: "
          f"multiplier {result.multiplier:.2f}x")
    if result.repetition:
        r = result.repetition
        print(f"{r['label']}: loss {r['loss']:.4f} on {human_tokens(r['unique_tokens'])} unique tokens -> worth "
              f"{human_tokens(r['effective_unique_tokens'])} ({r['multiplier']:.2f}x); "
              f"{result.synpro['label']} / {r['label']} effective tokens: {result.ratio_vs_repetition:.2f}x")
    for note in result.warnings:
        print(f"warning: {note}", file=sys.stderr)
    if args.out:
        plot_effective_tokens(result, args.out)
        print(f"wrote {args.out}")
    if args.json_out:
        from synpro_megatron.eval.runlogs import write_text_atomic

        write_text_atomic(args.json_out, json.dumps(result.to_dict(), indent=2) + "\n")
        print(f"wrote {args.json_out}")
    return 0


def report_cli(args) -> int:
    from synpro_megatron.eval.report import build_report

    try:
        out = build_report(args.run_dir, baseline=args.baseline, out_dir=args.out_dir)
    except (OSError, ValueError) as e:
        return _fail("report", e)
    print(f"wrote {out['report']} ({len(out['plots'])} figures)")
    for title, status in out["sections"].items():
        if status != "ok":
            print(f"  section {title!r}: {status} (see the report)")
    return 0
