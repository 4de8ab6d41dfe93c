"""The one exception type for mistakes the user can fix (bad flags, missing data, ...)."""

from __future__ import annotations

__all__ = ["BenchError"]


class BenchError(Exception):
    """A user error: the CLI prints its message on one line and exits non-zero, without traceback."""
