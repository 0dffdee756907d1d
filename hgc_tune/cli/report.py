"""hgc-tune report (not built yet)."""

from __future__ import annotations

HELP = "(not built yet)"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    raise NotImplementedError("hgc-tune report is not built yet")
