"""`synpro pretrain`: the command line of the pretraining package (launch.py parses, checks and
relaunches under torchrun; trainer.py trains)."""
from __future__ import annotations

import sys

from synpro_megatron.pretrain.launch import add_pretrain_args, run


def register_cli(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain a GPT model with megatron-core (TP/PP/DP)")
    add_pretrain_args(p)
    p.set_defaults(func=lambda a: run(a, sys.argv[2:]))
