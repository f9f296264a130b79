"""``lut build | predict | validate``: per-device latency lookup tables."""

from __future__ import annotations

from pathlib import Path

import click

from qfa_deploy.atomic import check_output
from qfa_deploy.commands.common import emit_json, set_threads, write_text_atomic
from qfa_deploy.commands.options import NON_NEGATIVE_INT, PROPORTION, SEED, THREADS, FiniteFloat
from qfa_deploy.errors import QfaError
from qfa_deploy.plot_format import plot_format

__all__ = ["COMMANDS"]


@click.group()
def lut():
    """Latency lookup tables: build on a device, predict a subnet, validate end to end."""


@lut.command()
@click.option("--device", required=True, help="Device name or profile file (see devices/).")
@click.option("--space", required=True)
@click.option("--resolution", type=click.IntRange(1, 4096), required=True)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Table file to write.")
@click.option("--fit-samples", type=NON_NEGATIVE_INT, default=20, show_default=True,
              help="Whole subnets measured for the fitted correction.")
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Boards measured in parallel (RPC tracker devices).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--threads", type=THREADS, default=None, help="Torch threads for folding the parts.")
@click.option("--force", is_flag=True, help="Replace -o if it exists (once the new table is complete).")
def build(device, space, resolution, output, fit_samples, workers, seed, threads, force):
    """Measure every part of SPACE at RESOLUTION on DEVICE; resumable (a journal sits beside -o)."""
    from qfa_deploy.lut.build import BuildPlan, build_table
    from qfa_deploy.space import create_space

    create_space(space)
    check_output(output, force)
    set_threads(threads)
    table = build_table(BuildPlan(device, space, resolution, fit_samples, seed=seed), output, workers=workers)
    click.echo(f"{output}: {len(table.entries)} parts, fit scale {table.scale:.3f} offset {table.offset_ms:.3f} ms")


@lut.command()
@click.option("--table", "table_path", required=True, type=click.Path(dir_okay=False))
@click.option("--arch", "arch_path", required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
def predict(table_path, arch_path, as_json):
    """Predicted latency of a subnet from a table."""
    from qfa_deploy.arch import load_arch
    from qfa_deploy.lut.table import LatencyTable

    table = LatencyTable.load(table_path)
    cfg = load_arch(arch_path, expect_space=table.space)
    result = table.prediction(cfg)
    if warning := table.stale_schedule():
        click.echo(warning, err=True)
    if as_json:
        emit_json(result)
    else:
        click.echo(f"{result['predicted_ms']:.3f} ms predicted on {result['device']} ({cfg.short()})")


@lut.command()
@click.option("--table", "table_path", required=True, type=click.Path(dir_okay=False))
@click.option("--device", required=True)
@click.option("--samples", type=click.IntRange(2, 100_000), default=50, show_default=True)
@click.option("--seed", type=SEED, default=1, show_default=True)
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Predicted-vs-measured scatter (PNG).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="Write the JSON report here.")
@click.option("--min-within", type=PROPORTION, default=None,
              help="Fail (exit 1) if the share within the tolerance is below this.")
@click.option("--tolerance", type=FiniteFloat(0, 100, open_low=True), default=10.0, show_default=True,
              help="The error (percent of the measured latency) a prediction may have to count as within.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--force", is_flag=True, help="Replace --plot and --report if they exist.")
def validate(table_path, device, samples, seed, plot, report_path, min_within, tolerance, as_json, force):
    """Measure SAMPLES unseen random subnets end to end and compare with the table's predictions."""
    import json
    import sys

    from qfa_deploy.lut.table import LatencyTable
    from qfa_deploy.lut.validate import timing_caveat, validate_table

    table = LatencyTable.load(table_path)
    for option, path in (("--plot", plot), ("--report", report_path)):
        if path is not None:
            check_output(path, force, option=option, inputs=(table_path,))
    if plot is not None and report_path is not None and Path(plot).absolute() == Path(report_path).absolute():
        raise QfaError("--plot and --report are the same file")
    if plot is not None:
        plot_format(plot)
    report = validate_table(table, device, samples, seed, plot, tolerance=tolerance / 100)
    if report_path:
        write_text_atomic(report_path, json.dumps(report, indent=1) + "\n")
    if as_json:
        emit_json({k: v for k, v in report.items() if k != "points"} if not report_path else report)
    else:
        tag = f" [{timing_caveat(report)}]" if timing_caveat(report) else ""
        within = f"within ±{tolerance:g}% {100 * report['within_tolerance']:.0f}%"
        if tolerance != 10:
            within = f"within ±10% {100 * report['within_10_percent']:.0f}%, {within}"
        click.echo(
            f"{report['device']}{tag}: MAPE {report['mape_percent']:.2f}%, {within} of {samples}, "
            f"Spearman {report['spearman']:.3f}"
        )
    if min_within is not None and report["within_tolerance"] < min_within:
        share = 100 * report["within_tolerance"]
        click.echo(f"error: only {share:.0f}% within ±{tolerance:g}% (< {100 * min_within:.0f}%)", err=True)
        sys.exit(1)


COMMANDS = [lut]
