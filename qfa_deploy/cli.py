"""The ``qfa-deploy`` command line: parses arguments and calls the library, nothing else.

Every user-facing problem is a QfaError (or a click usage error): one line on stderr, exit 2.
"""

from __future__ import annotations

import logging
import sys

import click

from qfa_deploy.commands.user_errors import fail

__all__ = ["main"]


class _Group(click.Group):
    def main(self, *args, **kwargs):
        # click prints usage errors on several lines; we want exactly one.
        kwargs.setdefault("standalone_mode", False)
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
            sys.exit(2)
        except click.UsageError as exc:
            fail(exc.format_message().replace("\n", " "))
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(130)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            fail(exc.format_message())


@click.group(cls=_Group)
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def cli(verbose: bool) -> None:
    """Quantized-for-all supernets to measured, compiled deployments."""
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def main() -> None:
    cli()


def _load_commands() -> None:
    from qfa_deploy.commands import register_all

    register_all(cli)


_load_commands()
