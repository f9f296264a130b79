"""Turning library exceptions (TVM's are many lines long) into one-line user messages."""

from __future__ import annotations

__all__ = ["one_line"]


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The most telling line of ``exc``: TVM puts the message last, after its traceback."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1][:limit] if lines else type(exc).__name__
