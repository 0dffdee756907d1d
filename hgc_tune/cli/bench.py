"""hgc-tune bench (not built yet)."""

from __future__ import annotations

HELP = "(not built yet)"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    raise NotImplementedError("hgc-tune bench is not built yet")
