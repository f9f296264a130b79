"""Helpers shared by the CLI verbs: writing files atomically, loading the model, threads."""

from __future__ import annotations

import json
from pathlib import Path

import click

from qfa_deploy.atomic import atomic_write_bytes
from qfa_deploy.errors import QfaError

__all__ = ["emit_json", "load_supernet", "set_threads", "write_text_atomic"]


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    if path.is_dir():
        raise QfaError(f"{path} is a directory")
    try:
        atomic_write_bytes(path, lambda f: f.write(text.encode()))
    except OSError as exc:
        raise QfaError(f"cannot write {path}: {exc.strerror or exc}") from None


def emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2))


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def load_supernet(checkpoint: str | None, space: str | None = None):
    """The supernet of ``checkpoint`` (default: the embedded reference checkpoint)."""
    from qfa_deploy.checkpoint import float32_model_state, load_checkpoint
    from qfa_deploy.nn.supernet import QFASupernet
    from qfa_deploy.reference import default_checkpoint

    path = Path(checkpoint) if checkpoint else default_checkpoint()
    payload = load_checkpoint(path, expect_space=space)
    net = QFASupernet(payload["space"], act_quantizer=payload.get("act_quantizer", "batchquant"))
    state = float32_model_state(payload)
    try:
        net.load_state_dict(state)
    except RuntimeError:
        raise QfaError(f"{path}: weights do not match the {payload['space']!r} supernet") from None
    return net.eval()


def schedule_option(command):
    """``--schedule``: how CPU workloads that no tuning database covers are scheduled (``compile_artifact``)."""
    from qfa_deploy.deploy.compile import DEFAULT_SCHEDULE, SCHEDULES

    return click.option(
        "--schedule", type=click.Choice(SCHEDULES), default=DEFAULT_SCHEDULE, show_default=True,
        help="CPU workloads no tuning database covers: auto (tiled-vnni on AVX512-VNNI CPUs, else tiled-cpu; "
             "what latency tables are measured with), tiled-vnni (1x1 convs as integer dot products), tiled-cpu "
             "(register-tiled conv2d), generic (inline + parallel loops only) or none (naive loops).",
    )(command)
