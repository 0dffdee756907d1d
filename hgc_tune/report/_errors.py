"""The report's error type."""

from __future__ import annotations

from hgc_tune.errors import HgcTuneError

__all__ = ["ReportError"]


class ReportError(HgcTuneError):
    """Bad report input: a Pareto file that violates its format, or a policy that does not fit the profile."""
