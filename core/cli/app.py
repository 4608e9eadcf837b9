"""The ``loraswitch`` command line. One small module per subcommand under ``core/cli/commands/``;
each has ``HELP``, ``add_arguments(parser)`` and ``run(args) -> exit code``. Adding a command
(the benchmark adds ``bench``) is one module plus one name in ``COMMANDS``.

    loraswitch train examples/quickstart.yaml --n_steps 20
    loraswitch config examples/quickstart.yaml --lora_r 8 --json
    loraswitch backends

Every ``UserError`` is printed as one line, ``error: ...``, with exit code 2; ``--debug`` (or
LORASWITCH_DEBUG=1) shows the traceback too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from typing import Any

from loraswitch.core import __version__
from loraswitch.core.errors import UserError

# Subcommand name -> module under loraswitch.core.cli.commands, in the order --help lists them.
COMMANDS: dict[str, str] = {
    "train": "train",
    "quickstart": "quickstart",
    "config": "config",
    "generate": "generate",
    "evaluate": "evaluate",
    "report": "report",
    "merge": "merge",
    "export": "export",
    "backends": "backends",
    "plugins": "plugins",
    "models": "models",
    "bench": "bench",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is a UserError: one line and exit 2, like every bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


def _command_module(name: str) -> Any:
    return importlib.import_module(f"loraswitch.core.cli.commands.{COMMANDS[name]}")


def build_parser() -> tuple[_Parser, dict[str, _Parser]]:
    debug = _Parser(add_help=False)
    debug.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks (also LORASWITCH_DEBUG=1)"
    )
    parser = _Parser(
        prog="loraswitch",
        description="LoRA fine-tuning with pluggable PyTorch and JAX backends.",
        parents=[debug],
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"loraswitch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers = {}
    for name in COMMANDS:
        module = _command_module(name)
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=module.__doc__,
            parents=[debug],
            formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,
        )
        module.add_arguments(p)
        p.set_defaults(_module=module)
        subparsers[name] = p
    return parser, subparsers


def split_overrides(tokens: list[str], parser: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """Separate ``--KEY VALUE`` config overrides from the command's own options: any ``--name``
    the command does not declare is an override (an unknown key is reported by
    ``parse_cli_overrides``, with the nearest valid key)."""
    own = set(parser._option_string_actions)  # argparse keeps no public list of option strings
    rest, overrides = [], []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "--":
            rest.extend(tokens[i:])
            break
        name = tok.split("=", 1)[0]
        if tok.startswith("--") and name not in own:
            overrides.append(tok)
            if "=" not in tok and i + 1 < len(tokens):
                overrides.append(tokens[i + 1])
                i += 1
        else:
            rest.append(tok)
        i += 1
    return rest, overrides


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("LORASWITCH_DEBUG", "") not in ("", "0")
    try:
        parser, subparsers = build_parser()
        command = next((a for a in argv if not a.startswith("-")), None)
        overrides: list[str] = []
        if command in subparsers and getattr(_command_module(command), "TAKES_OVERRIDES", False):
            before, after = argv[: argv.index(command) + 1], argv[argv.index(command) + 1 :]
            after, overrides = split_overrides(after, subparsers[command])
            argv = before + after
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if getattr(args._module, "TAKES_OVERRIDES", False):
            from loraswitch.core.config import parse_cli_overrides

            args.overrides = parse_cli_overrides(overrides)
        return int(args._module.run(args) or 0)
    except UserError as e:
        if debug:
            traceback.print_exc()
        message = " ".join(str(e).split())  # one line, whatever the message held
        print(f"error: {message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `loraswitch plugins | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
