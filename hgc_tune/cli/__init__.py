"""The ``hgc-tune`` command line: one module per subcommand.

Each subcommand module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``;
heavy imports (torch, diffusers, optuna) happen inside ``run`` so ``hgc-tune --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from typing import NoReturn

__all__ = ["main"]

# Subcommand name -> module, in the order a user meets them.
COMMANDS: dict[str, str] = {
    "data": "hgc_tune.cli.data",
    "profile": "hgc_tune.cli.profile",
    "search": "hgc_tune.cli.search",
    "generate": "hgc_tune.cli.generate",
    "evaluate": "hgc_tune.cli.evaluate",
    "report": "hgc_tune.cli.report",
    "macs": "hgc_tune.cli.macs",
    "bench": "hgc_tune.cli.bench",
    "demo": "hgc_tune.cli.demo",
}


class _UsageError(Exception):
    """A command line argparse rejects; ``main`` prints it as one line and returns 2."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors reach :func:`main` (one line, exit status 2) instead of exiting."""

    def error(self, message: str) -> NoReturn:
        # The checks in ``_checks`` name the flag themselves: drop argparse's "argument --steps: " prefix.
        raise _UsageError(re.sub(r"^argument [^:]+: (?=`)", "", message))


def build_parser() -> argparse.ArgumentParser:
    from hgc_tune import __version__

    parser = _Parser(
        prog="hgc-tune",
        description=(
            "Hybrid-Grained Cache for Stable Diffusion + ControlNet: profile a pipeline, search a caching "
            "policy under a fidelity budget, apply it, and report it."
        ),
    )
    parser.add_argument("--version", action="version", version=f"hgc-tune {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=module.HELP, description=module.__doc__)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (0 ok, 2 user error, 1 a failure of the environment)."""
    from hgc_tune.errors import HgcTuneError, ResourceError

    # Library chatter (e.g. transformers' note that torchvision is absent) would bury the CLI's own output;
    # a user who wants it sets these variables.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as e:
        command = _command_of(argv if argv is not None else sys.argv[1:])
        print(f"hgc-tune{command}: error: {e}", file=sys.stderr)
        return 2
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except HgcTuneError as e:
        if args.debug:
            raise
        print(f"hgc-tune {args.command}: error: {e}", file=sys.stderr)
        return 1 if isinstance(e, ResourceError) else 2
    except MemoryError as e:
        # Out of memory outside the places that say what needed it (model loading does): still one line.
        if args.debug:
            raise
        detail = f" ({e})" if str(e) else ""
        print(f"hgc-tune {args.command}: error: out of memory{detail}.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"hgc-tune {args.command}: interrupted", file=sys.stderr)
        return 130


def _command_of(argv: list[str]) -> str:
    """`` NAME`` for the subcommand in ``argv`` (for error messages), or ``""``."""
    return next((f" {a}" for a in argv if a in COMMANDS), "")
