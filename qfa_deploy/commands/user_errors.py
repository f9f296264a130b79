"""How the CLI reports a user error: one line on stderr and exit 2 (the one wrapper; cli.py and every verb use it)."""

from __future__ import annotations

import functools
import sys

import click

from qfa_deploy.errors import QfaError

__all__ = ["fail", "user_errors"]


def fail(message: str) -> None:
    one_line = message.replace("\r", "\\r").replace("\n", "\\n")  # a path may hold a newline
    click.echo(f"error: {one_line}", err=True)
    sys.exit(2)


def user_errors(fn):
    """Turn QfaError, an OSError about a named path (and interrupted runs) into one line on stderr
    and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except QfaError as exc:
            fail(str(exc))
        except OSError as exc:  # a path the system refuses (symlink loop, name too long, read-only, ...)
            if exc.filename is None:
                raise
            fail(f"{exc.filename}: {exc.strerror or exc.__class__.__name__}")
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper
