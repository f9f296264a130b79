"""Strict JSON for every file the package reads: finite numbers, bounded integers, checked types.

Python's ``json`` accepts ``NaN``, ``Infinity``, ``1e999`` (read as ``inf``) and integers of thousands
of digits (``ValueError`` past 4300 digits, or ``OverflowError`` later). A cfg.json, latency table,
collect record or artifact ``meta.json`` never holds those, so they are refused here with one line
naming the file, instead of a traceback or a ``nan`` result later on.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from qfa_deploy.errors import QfaError

__all__ = ["MAX_INT_DIGITS", "check_number", "check_type", "parse_json", "read_json"]

MAX_INT_DIGITS = 18  # fits int64: sizes, steps, counts


class _Refused(ValueError):
    pass


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(f"an integer of {len(text.lstrip('-'))} digits")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"a number out of range ({text[:20]})")
    return value


def _parse_constant(text: str):
    raise _Refused(f"a non-finite number ({text})")


def parse_json(text: str | bytes, where: str) -> Any:
    """``json.loads`` that refuses NaN, infinities and huge integers; errors name ``where``."""
    try:
        return json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except _Refused as exc:
        raise QfaError(f"{where}: {exc} (only finite numbers and integers of up to {MAX_INT_DIGITS} digits)") from None
    except json.JSONDecodeError as exc:
        raise QfaError(f"{where}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except UnicodeDecodeError:
        raise QfaError(f"{where}: not a JSON text file (not UTF-8)") from None
    except RecursionError:
        raise QfaError(f"{where}: not valid JSON (nested too deeply)") from None


def read_json(path: str | Path, what: str) -> Any:
    """The strict JSON content of ``path``; a missing or unreadable file is ``no such WHAT``/``cannot read``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise QfaError(f"{path}: no such {what}") from None
    except OSError as exc:  # a directory, no permission, an I/O error
        raise QfaError(f"{path}: cannot read {what} ({exc.strerror or exc.__class__.__name__})") from None
    return parse_json(data, str(path))


def check_type(value: Any, types: type | tuple[type, ...], where: str) -> Any:
    """``value`` if it is an instance of ``types`` (``bool`` never counts as a number)."""
    names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise QfaError(f"{where} must be {names}, not {value!r}")
    if not isinstance(value, types):
        raise QfaError(f"{where} must be {names}, not {type(value).__name__}")
    return value


def check_number(
    value: Any, where: str, *, low: float | None = None, high: float | None = None, integer: bool = False
) -> float | int:
    """A finite number (an integer with ``integer``) within ``[low, high]``, else a one-line QfaError."""
    check_type(value, int if integer else (int, float), where)
    if isinstance(value, float) and not math.isfinite(value):
        raise QfaError(f"{where} = {value!r} is not a finite number")
    if isinstance(value, int) and abs(value) >= 10**MAX_INT_DIGITS:
        raise QfaError(f"{where} is an integer of {len(str(abs(value)))} digits")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{'' if low is None else f'{low:g}'}, {'' if high is None else f'{high:g}'}]"
        raise QfaError(f"{where} = {value!r} is outside {bounds}")
    return value
