"""``convert``: the seed's (apple/ml-batchquant) files into qfa-deploy's, one verb per format."""

from __future__ import annotations

import json

import click

from qfa_deploy.atomic import check_output
from qfa_deploy.commands.options import output_file_options
from qfa_deploy.errors import QfaError

__all__ = ["COMMANDS"]


@click.group()
def convert() -> None:
    """Read the seed's (apple/ml-batchquant) genes and checkpoints and write qfa-deploy files."""


@convert.command("qfa-gene")
@click.argument("source")
@click.option("--index", type=click.IntRange(min=0), default=None,
              help="Row of a gene matrix (.npy, or a JSON list of lists).")
@click.option("--all", "all_dir", type=click.Path(file_okay=False), default=None,
              help="Convert every row into this new folder (qfa-gene-NNN.json).")
@output_file_options("Write cfg.json here (default: stdout).", required=False,
                     force_help="Replace -o / --all if it exists.")
def qfa_gene(source, index, all_dir, output, force):
    """The seed's 176-integer gene(s) from SOURCE (a .npy such as pareto_archs.npy, a JSON file or an
    inline JSON list) as qfa-mbv3-w1.2 cfg.json."""
    from qfa_deploy.convert.qfa_gene import pick_gene, read_genes, write_gene_folder

    if all_dir is not None and (index is not None or output is not None):
        raise QfaError("--all writes every row: it goes without --index and -o")
    if output:
        check_output(output, force, inputs=(source,))
    if all_dir is not None:  # (staged_directory would make its missing parents)
        check_output(all_dir, force, folder=True, option="--all", inputs=(source,))
    genes, where = read_genes(source)
    if all_dir is not None:
        count = write_gene_folder(genes, where, all_dir, force)
        click.echo(f"{count} configs in {all_dir}", err=True)
        return
    cfg = pick_gene(genes, where, index)
    if output:
        from qfa_deploy.commands.common import write_text_atomic

        write_text_atomic(output, cfg.to_json())
    else:
        click.echo(cfg.to_json(), nl=False)


@convert.command("qfa-checkpoint")
@click.argument("source", type=click.Path(dir_okay=False))
@output_file_options("Write the qfa-deploy supernet checkpoint here.")
def qfa_checkpoint(source, output, force):
    """The seed's supernet checkpoint SOURCE (b234_ps.pth: QFAMobileNetV3, W1.2, bits 2-4) as a
    qfa-mbv3-w1.2 checkpoint (weights, BN, LSQ steps, BatchQuant parameters and per-bit ranges)."""
    from qfa_deploy.convert.qfa_checkpoint import SEED_SPACE, convert_file

    check_output(output, force, inputs=(source,))
    used = convert_file(source, output)
    click.echo(f"{output}: space {SEED_SPACE} from {used} tensors of {source} (stem conv 8-bit here, "
               "float in the seed)", err=True)


@convert.command("ofa-checkpoint")
@click.argument("source", type=click.Path(dir_okay=False))
@output_file_options("Write the qfa-deploy supernet checkpoint here.")
def ofa_checkpoint(source, output, force):
    """OFA's float supernet SOURCE (ofa_mbv3_d234_e346_k357_w1.2, mit-han-lab/once-for-all) as a
    qfa-mbv3-w1.2 checkpoint to warm-start `train --init-from` from, its quantizers initialised as the
    seed's training initialises them (LSQ steps from the weights, BatchQuant alpha 1, offset 0)."""
    from qfa_deploy.convert.ofa_checkpoint import OFA_SPACE, convert_file

    check_output(output, force, inputs=(source,))
    used = convert_file(source, output)
    click.echo(f"{output}: space {OFA_SPACE} from {used} tensors of {source} (float weights; quantizers "
               "initialised as the seed's warm start)", err=True)


@convert.command("qfa-samples")
@click.argument("source", type=click.Path())
@output_file_options("Write the records here (acc.jsonl, the format `collect` writes).")
def qfa_samples(source, output, force):
    """The seed's measured subnets in SOURCE (a folder of collect_network_info.py's JSON files, or a
    JSON list such as qsamples_8k.json) as `collect` records, for `predictor fit`."""
    from qfa_deploy.commands.common import write_text_atomic
    from qfa_deploy.convert.qfa_samples import convert_samples, records_jsonl

    check_output(output, force, inputs=(source,))
    records = convert_samples(source)
    write_text_atomic(output, records_jsonl(records))
    click.echo(f"{output}: {len(records)} subnets of qfa-mbv3-w1.2 from {source} (top1 = acc1 / 100)", err=True)


@convert.command("to-qfa-gene")
@click.argument("arch", type=click.Path(dir_okay=False))
def to_qfa_gene(arch):
    """Print the seed's gene of a qfa-mbv3-w1.2 ARCH config (a JSON list of 176 integers)."""
    from qfa_deploy.arch import load_arch
    from qfa_deploy.convert.qfa_gene import SEED_SPACE, arch_to_gene

    cfg = load_arch(arch)
    if cfg.space != SEED_SPACE:
        raise QfaError(f"{arch}: the seed's gene describes space {SEED_SPACE!r}, this config is of {cfg.space!r}")
    click.echo(json.dumps(arch_to_gene(cfg)))


COMMANDS = [convert]
