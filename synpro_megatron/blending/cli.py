"""`synpro blend …`: the command line of the blending package."""
from __future__ import annotations


def register_cli(subparsers) -> None:
    from synpro_megatron.blending.check_megatron import register_blend_subcommand
    from synpro_megatron.blending.inspect import add_inspect_parser

    blend = subparsers.add_parser("blend", help="blend schedules (organic + synthetic rounds)")
    blend_sub = blend.add_subparsers(dest="blend_command", metavar="SUBCOMMAND")
    blend_sub.required = True
    add_inspect_parser(blend_sub)  # `synpro blend inspect`
    register_blend_subcommand(blend_sub)  # `synpro blend check-megatron` (imports megatron-core lazily)
