"""Command line: parse argv, call one command, turn UserError into one clear line and an exit code.

Each sub-command lives in its own module under `minicpm_recipes.commands` with `HELP`, `add_arguments(parser)`
and `run(args) -> int`. Those modules import heavy libraries (torch, LLaMA-Factory) only inside `run`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import UserError

# name -> module; order is the order of `--help`
COMMANDS: dict[str, str] = {
    "list": "minicpm_recipes.commands.list_cmd",
    "render": "minicpm_recipes.commands.render_cmd",
    "tiny-model": "minicpm_recipes.commands.tiny_model_cmd",
    "validate": "minicpm_recipes.commands.validate_cmd",
    "train": "minicpm_recipes.commands.train_cmd",
    "install": "minicpm_recipes.commands.install_cmd",
    "preview": "minicpm_recipes.commands.preview_cmd",
    "serve": "minicpm_recipes.commands.serve_cmd",
    "render-export": "minicpm_recipes.commands.render_export_cmd",
    "finetune": "minicpm_recipes.commands.finetune_cmd",
    "convert": "minicpm_recipes.commands.convert_cmd",
    "register": "minicpm_recipes.commands.register_cmd",
}

PROG = "minicpm-recipes"


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line naming the command and where its help is (exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Fine-tune MiniCPM (and other chat LLMs) with LLaMA-Factory, correctly on the first try.",
        epilog=f"Run `{PROG} COMMAND --help` for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run, _parser=cmd)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the sub-command's parser, which knows its own options
        args._parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        message = str(exc).replace("\n", " ")
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
