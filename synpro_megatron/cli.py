"""`synpro` command line. Each package registers its own subcommands in its `cli.py`.

A module listed in COMMAND_MODULES provides `register_cli(subparsers)`, which adds one or more
subparsers and sets `func` (called with the parsed args; its return value is the exit code).
Modules are imported only when the CLI starts, so `import synpro_megatron` stays light.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings

COMMAND_MODULES = [
    "synpro_megatron.data.cli",
    "synpro_megatron.pretrain.cli",
    "synpro_megatron.influence.cli",
    "synpro_megatron.blending.cli",
    "synpro_megatron.loop.cli",
    "synpro_megatron.eval.cli",
    "synpro_megatron.rl.cli",
    "synpro_megatron.synthesis.cli",
    "synpro_megatron.rewards.cli",
    "synpro_megatron.demo",
]


def quiet_optional_dependency_warnings() -> None:
    # megatron-core warns at import about Apex / Transformer Engine on every CPU run; they are optional.
    warnings.filterwarnings("ignore", message=r".*(Apex|Transformer Engine).*")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synpro", description="SynPro-Megatron: model-aware synthetic pretraining data")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register_cli(sub)
    return parser


def main(argv=None) -> int:
    quiet_optional_dependency_warnings()
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
