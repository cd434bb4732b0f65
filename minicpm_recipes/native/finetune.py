"""Entry point for launchers: `torchrun --nproc_per_node N -m minicpm_recipes.native.finetune ARGS`.

Same arguments as `minicpm-recipes finetune ARGS`.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from ..cli import main as cli_main

    return cli_main(["finetune", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
