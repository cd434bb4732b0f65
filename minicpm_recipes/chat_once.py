"""One chat answer from an inference config, with LLaMA-Factory's ChatModel (what `llamafactory-cli chat` uses).

    python -m minicpm_recipes.chat_once CONFIG "your question" [key=value ...]

Prints `Assistant: ANSWER` (newlines in the answer escaped) and exits 0. `llamafactory-cli chat` reads its
questions from a terminal and, with piped input, sometimes aborts while shutting down its background event loop
(`terminate called without an active exception`) after answering; this leaves the process without that
shutdown, so scripts (`make demo`) get a reliable exit status.
"""

from __future__ import annotations

import os
import sys


def parse_overrides(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"chat_once: expected KEY=VALUE, got {item!r}")
        out[key] = yaml.safe_load(value) if value else ""
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    from .errors import UserError
    from .inference import read_yaml_config

    try:
        args = read_yaml_config(argv[0])
    except UserError as exc:
        print(f"chat_once: error: {exc}", file=sys.stderr)
        return exc.exit_code
    args.update(parse_overrides(argv[2:]))
    from llamafactory.chat import ChatModel

    model = ChatModel(args)
    answer = model.chat([{"role": "user", "content": argv[1]}])[0].response_text
    print("Assistant: " + answer.replace("\n", "\\n"), flush=True)
    sys.stderr.flush()
    os._exit(0)  # skip interpreter shutdown (see the module docstring)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
