"""The one exception type users see: a one-line message, no traceback."""

__all__ = ["QfaError"]


class QfaError(Exception):
    """A user-facing error (bad input, missing file, unreachable device).

    The CLI prints ``error: <message>`` on one line and exits with status 2.
    """
