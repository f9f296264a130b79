"""The image format a ``--plot`` path asks for (its suffix; png without one), refused before any work
when matplotlib cannot write it."""

from __future__ import annotations

from pathlib import Path

from qfa_deploy.errors import QfaError

__all__ = ["plot_format"]


def plot_format(path: str | Path, option: str = "--plot") -> str:
    from matplotlib.backend_bases import FigureCanvasBase

    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    supported = FigureCanvasBase.get_supported_filetypes()
    if fmt not in supported:
        raise QfaError(f"{path} ({option}): cannot write .{fmt} images; use one of {', '.join(sorted(supported))}")
    return fmt
