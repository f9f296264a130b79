"""``train`` and ``eval``: supernet training and per-subnet accuracy."""

from __future__ import annotations

import os

import click

from qfa_deploy.commands.options import (
    COUNT,
    NON_NEGATIVE_FLOAT,
    NON_NEGATIVE_INT,
    POSITIVE_FLOAT,
    SEED,
    THREADS,
    calib_batches_option,
)

__all__ = ["COMMANDS"]


@click.command()
@click.option("--space", required=True, help="Search space to train.")
@click.option("--data", "data_dir", default=None, type=click.Path(),
              help="Data directory: CIFAR-10 (.npz or torchvision's folder) or an ImageFolder tree "
                   "(train/, val/); default: the shared CIFAR-10.")
@click.option("--data-workers", type=NON_NEGATIVE_INT, default=None,
              help="Processes decoding an ImageFolder's images, per rank (default: up to 4).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory (checkpoint, logs).")
@click.option("--resume", is_flag=True, help="Continue the run in --out where its checkpoint stopped.")
@click.option("--fp-epochs", type=NON_NEGATIVE_FLOAT, default=2.0, show_default=True,
              help="Full-precision warm-start epochs.")
@click.option("--q-epochs", type=NON_NEGATIVE_FLOAT, default=8.0, show_default=True, help="Mixed-precision epochs.")
@click.option("--batch-size", type=COUNT, default=128, show_default=True)
@click.option("--lr", type=POSITIVE_FLOAT, default=0.1, show_default=True, help="Peak LR of the warm start.")
@click.option("--q-lr", type=POSITIVE_FLOAT, default=0.03, show_default=True, help="Peak LR of the quantized phase.")
@click.option("--num-random", type=NON_NEGATIVE_INT, default=2, show_default=True,
              help="Random subnets per step (sandwich rule).")
@click.option("--checkpoint-every", type=COUNT, default=25, show_default=True, help="Steps between checkpoints.")
@click.option("--act-quantizer", type=click.Choice(["batchquant", "lsq"]), default="batchquant", show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--max-steps", type=COUNT, default=None, help="Stop after this many steps (schedule unchanged).")
@click.option("--threads", type=THREADS, default=None, help="Torch intra-op threads.")
@click.option("--init-from", type=click.Path(dir_okay=False), default=None,
              help="Start from this checkpoint's weights (new schedule, fresh optimiser), e.g. to extend a run.")
def train(resume, threads, **options):
    """Train a supernet (sandwich rule + in-place distillation); torchrun for several processes."""
    from qfa_deploy.atomic import check_output
    from qfa_deploy.commands.common import set_threads
    from qfa_deploy.train import TrainConfig
    from qfa_deploy.train import train as run

    set_threads(threads)
    cfg = TrainConfig(**options)  # every option but --resume and --threads, by name; checks space and epochs
    check_output(cfg.out, folder=True, append=True, option="--out")  # a run folder continues with --resume
    result = run(cfg, resume=resume)
    if os.environ.get("RANK", "0") == "0":  # torchrun: one line, not one per rank
        click.echo(f"checkpoint: {result.checkpoint} (step {result.step})")


@click.command(name="eval")
@click.option("--checkpoint", default=None, type=click.Path(), help="Supernet checkpoint (default: embedded).")
@click.option("--arch", required=True, type=click.Path(), help="cfg.json of the subnet.")
@click.option("--data", "data_dir", default=None, type=click.Path(), help="Data directory.")
@calib_batches_option()
@click.option("--limit", type=COUNT, default=None, help="Evaluate on the first N test images only.")
@click.option("--download", is_flag=True,
              help="First download CIFAR-10 with torchvision into --data (or $QFA_DATA_DIR); needs the internet.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--threads", type=THREADS, default=None)
def eval_cmd(as_json, threads, **options):
    """Top-1 on the test split of a subnet after per-subnet calibration (--calib-batches 0: stored statistics)."""
    from qfa_deploy.commands.common import emit_json, set_threads
    from qfa_deploy.subnet_eval import EvalConfig, eval_subnet

    set_threads(threads)
    result = eval_subnet(EvalConfig(**options))  # every option but --json and --threads, by name
    if as_json:
        emit_json(result)
    else:
        click.echo(f"top-1 {100 * result['top1']:.2f}% on {result['images']} test images ({result['arch']})")


COMMANDS = [train, eval_cmd]
