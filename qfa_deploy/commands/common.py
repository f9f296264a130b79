"""Helpers shared by the CLI verbs: writing files atomically, loading the model, threads."""

from __future__ import annotations

import json

import click

from qfa_deploy.atomic import write_text_atomic  # re-exported: the verbs' writer

__all__ = ["emit_json", "load_supernet", "set_threads", "write_text_atomic"]



def emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2))


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def load_supernet(checkpoint: str | None, space: str | None = None):
    """The supernet of ``checkpoint`` (default: the embedded reference checkpoint): ``checkpoint.load_supernet``."""
    from qfa_deploy.checkpoint import load_supernet as load
    from qfa_deploy.reference import default_checkpoint

    return load(checkpoint or default_checkpoint(), space)


def schedule_option(command):
    """``--schedule``: how workloads that no tuning database covers are scheduled (``compile_artifact``);
    the choices are the target packages' schedules (``qfa_deploy.deploy.registry``)."""
    from qfa_deploy.deploy.compile import DEFAULT_SCHEDULE, SCHEDULES

    return click.option(
        "--schedule", type=click.Choice(SCHEDULES), default=DEFAULT_SCHEDULE, show_default=True,
        help="How workloads no tuning database covers are scheduled: auto (the device profile's schedule, else "
             "the best its target has: tiled-vnni on AVX512-VNNI x86 CPUs, else tiled-cpu; tiled-dotprod on "
             "aarch64 with the dot-product extension, else tiled-neon; dlight on CUDA; what latency tables are "
             "measured with), tiled-vnni / tiled-dotprod / tiled-neon (1x1 convs as integer dot products), "
             "tiled-cpu (register-tiled conv2d), generic (inline + parallel loops only), dlight (TVM's CUDA "
             "pipeline with DLight's GPU rules; the only CUDA schedule) or none (none of ours: naive loops on "
             "CPUs, on CUDA the same build as dlight, recorded as none). "
             "`qfa-deploy devices` shows what auto picks for each device.",
    )(command)
