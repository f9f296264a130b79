"""Click parameter types shared by every verb: counts, threads, finite floats, timeouts.

Each one refuses a bad value while click parses the command line, so the error is click's one line
(``Invalid value for '--threads': ...``, exit 2) before any file is read or written.
"""

from __future__ import annotations

import math

import click

__all__ = [
    "CALIB_BATCHES", "COUNT", "NON_NEGATIVE_FLOAT",
    "NON_NEGATIVE_INT", "POSITIVE_FLOAT", "PROPORTION", "SEED", "THREADS", "TIMEOUT",
    "FiniteFloat", "NonEmptyPath", "calib_batches_option", "output_file_options", "refuse_empty_paths",
]

# Bounded so a thousands-of-digits integer is refused instead of reaching range() or torch.
_MAX_INT = 2**31 - 1

COUNT = click.IntRange(1, _MAX_INT)  # samples, steps, batches, images: at least one
NON_NEGATIVE_INT = click.IntRange(0, _MAX_INT)
THREADS = click.IntRange(1, 1024)  # torch.set_num_threads raises on <= 0
SEED = click.IntRange(0, 2**32 - 1)  # numpy refuses negative seeds, torch overflows past int64
CALIB_BATCHES = NON_NEGATIVE_INT  # 0: no calibration, the checkpoint's stored statistics


def calib_batches_option(default: int = 20):
    """``--calib-batches`` of the verbs that may skip calibration (``export``, ``eval``): 0 keeps the
    checkpoint's stored BN and BatchQuant statistics unchanged and reads no calibration data."""
    return click.option(
        "--calib-batches",
        type=CALIB_BATCHES,
        default=default,
        show_default=True,
        help="Calibration batches of 100 validation images; 0: no calibration, the checkpoint's stored "
        "BN and BatchQuant statistics are used unchanged and no calibration data is read.",
    )


def output_file_options(help: str, *, required: bool = True, force_help: str = "Replace -o if it exists."):
    """``-o/--output`` (a file, not a folder; ``help`` says what is written) and ``--force`` (replace it),
    in that order, for the verbs that write one file (``convert``'s)."""

    def decorate(command):
        command = click.option("--force", is_flag=True, help=force_help)(command)
        optional = {} if required else {"default": None}
        return click.option(
            "-o", "--output", type=click.Path(dir_okay=False), required=required, help=help, **optional
        )(command)

    return decorate


class FiniteFloat(click.ParamType):
    """A float that is not NaN or infinite, within ``[low, high]`` (``low`` excluded if ``open_low``)."""

    name = "float"

    def __init__(self, low: float | None = None, high: float | None = None, open_low: bool = False) -> None:
        self.low, self.high, self.open_low = low, high, open_low

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            number = value
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.low is not None and (number < self.low or (self.open_low and number == self.low)):
            self.fail(f"{number:g} is not {'>' if self.open_low else '>='} {self.low:g}", param, ctx)
        if self.high is not None and number > self.high:
            self.fail(f"{number:g} is not <= {self.high:g}", param, ctx)
        return number

    def __repr__(self) -> str:
        return f"FiniteFloat({self.low}, {self.high})"


POSITIVE_FLOAT = FiniteFloat(0.0, open_low=True)  # budgets, learning rates
NON_NEGATIVE_FLOAT = FiniteFloat(0.0)  # epochs
PROPORTION = FiniteFloat(0.0, 1.0)  # shares such as --min-within
TIMEOUT = FiniteFloat(0.0, 24 * 3600.0, open_low=True)  # seconds: NaN/inf would wait forever or never


class NonEmptyPath(click.ParamType):
    """A ``click.Path`` that refuses ``""``: an empty -o, --out or --table would otherwise mean
    stdout, the current folder or no table at all, silently."""

    def __init__(self, inner: click.Path) -> None:
        self.inner, self.name = inner, inner.name

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value:
            self.fail("an empty path", param, ctx)
        return self.inner.convert(value, param, ctx)

    def get_metavar(self, *args, **kwargs):
        return self.inner.get_metavar(*args, **kwargs)

    def shell_complete(self, ctx, param, incomplete):
        return self.inner.shell_complete(ctx, param, incomplete)


def refuse_empty_paths(command: click.Command) -> None:
    """Every path argument and option of ``command`` refuses an empty string (applied to every verb)."""
    for param in command.params:
        if isinstance(param.type, click.Path):
            param.type = NonEmptyPath(param.type)
