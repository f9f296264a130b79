"""``export`` and ``verify``: a subnet to a deployable artifact folder, and its parity report."""

from __future__ import annotations

import click

from qfa_deploy.commands.common import emit_json, schedule_option, set_threads
from qfa_deploy.commands.options import COUNT, PROPORTION, THREADS, calib_batches_option
from qfa_deploy.deploy.compile import DEBUG_SYMBOLS_HELP

__all__ = ["COMMANDS"]


@click.command()
@click.option("--arch", "arch_path", required=True, type=click.Path(), help="cfg.json of the subnet.")
@click.option(
    "--target",
    default="onnx",
    show_default=True,
    help="onnx, or a device to compile for with TVM (x86, arm64, cuda, a device file).",
)
@click.option("--checkpoint", default=None, type=click.Path(), help="Supernet checkpoint (default: embedded).")
@calib_batches_option()
@click.option(
    "--data",
    "data_dir",
    default=None,
    type=click.Path(),
    help="Data directory (default: $QFA_DATA_DIR, else the CIFAR-10 calibration images shipped in the package; "
    "not read with --calib-batches 0).",
)
@click.option("--out", required=True, type=click.Path(), help="Artifact folder to create.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("--threads", type=THREADS, default=None, help="Torch intra-op threads.")
@schedule_option
@click.option("--debug-symbols", is_flag=True, help=DEBUG_SYMBOLS_HELP)
def export(arch_path, target, checkpoint, calib_batches, data_dir, out, force, threads, schedule, debug_symbols):
    """Calibrate, fold and export a subnet: OUT/model.onnx (QDQ) and OUT/meta.json.

    With --calib-batches 0 the subnet keeps the checkpoint's stored statistics and no data is read.
    """
    from qfa_deploy.export.pipeline import ExportConfig, export_subnet

    set_threads(threads)
    meta = export_subnet(ExportConfig(arch_path, out, target=target, checkpoint=checkpoint,
                                      calib_batches=calib_batches, data_dir=data_dir, force=force, schedule=schedule,
                                      debug_symbols=debug_symbols))
    files = ", ".join(meta["files"])
    click.echo(f"wrote {out} ({files}, meta.json) for {meta['arch_short']}")


@click.command()
@click.argument("folder", type=click.Path())
@click.option("--limit", type=COUNT, default=None, help="Compare on the first N test images only.")
@click.option("--data", "data_dir", default=None, type=click.Path(), help="Data directory.")
@click.option(
    "--runtimes",
    default=None,
    help="Comma-separated subset of pytorch,folded,ort_noopt,ort_default,tvm_x86,tvm_artifact "
    "(default: all that apply; tvm_artifact runs the x86 library of an artifact exported with --target x86).",
)
@click.option(
    "--min-agreement",
    type=PROPORTION,
    default=0.999,
    show_default=True,
    help="Fail (exit 1) if a runtime's top-1 agrees with PyTorch on fewer images.",
)
@click.option("--json", "as_json", is_flag=True)
@click.option("--threads", type=THREADS, default=None)
def verify(folder, limit, data_dir, runtimes, min_agreement, as_json, threads):
    """Parity of an export artifact: PyTorch vs onnxruntime (no-opt, default) vs TVM x86."""
    import torch

    from qfa_deploy.export.verify import VerifyConfig, verify_artifact

    set_threads(threads)
    names = tuple(r.strip() for r in runtimes.split(",") if r.strip()) if runtimes else None
    config = VerifyConfig(folder, limit=limit, data_dir=data_dir, runtimes=names or None,
                          threads=torch.get_num_threads())
    report = verify_artifact(config)
    if as_json:
        emit_json(report)
    else:
        _print_verify_report(report)
    _fail_below(report, min_agreement)


def _print_verify_report(report: dict) -> None:
    """``verify``'s text report: the rebuild, the quantizer check, a table of the runtimes."""
    rb = report["rebuild"]
    click.echo(f"{report['artifact']} (target {report['target']}): {report['arch']}")
    if rb["identical"]:
        click.echo("rebuilt from the checkpoint: constants identical")
    else:
        click.echo(
            f"rebuilt from the checkpoint: constants differ (integer {rb['max_integer_diff']}, "
            f"relative float {rb['max_relative_float_diff']:.2e})"
        )
    q = report["quantizers"]
    click.echo(
        f"every quantizer, teacher-forced on {q['runtime']}'s codes ({q['images']} images): "
        f"max code diff {q['max_code_diff']}, {q['differing_codes']} of {q['codes']} codes differ"
    )
    _print_runtime_table(report["runtimes"])
    click.echo(f"{report['images']} test images, logits up to {report['logit_range']:.3g}")


def _print_runtime_table(runtimes: dict) -> None:
    """One line per runtime (top-1, agreement and logit difference vs PyTorch and vs ort_noopt, seconds),
    then one line per runtime with top-1 disagreements."""
    click.echo(
        f"{'runtime':<13}{'top-1':>8} {'agree':>8} {'max|dlogit|':>12}   "
        f"{'vs ort_noopt: agree':>19} {'max|dlogit|':>12} {'seconds':>8}"
    )
    for name, r in runtimes.items():
        top1 = f"{100 * r['top1']:7.2f}%" if "top1" in r else f"{'-':>8}"
        if "agreement_vs_ort_noopt" in r:
            vs_ort = f"{100 * r['agreement_vs_ort_noopt']:18.2f}% {r['max_abs_logit_diff_vs_ort_noopt']:12.3g}"
        else:
            vs_ort = f"{'-':>19} {'-':>12}"
        click.echo(
            f"{name:<13}{top1} {100 * r['agreement']:7.2f}% {r['max_abs_logit_diff']:12.3g}   "
            f"{vs_ort} {r['seconds']:8.1f}"
        )
    for name, r in runtimes.items():
        if r["disagreements"]:
            click.echo(
                f"{name}: {r['disagreements']} top-1 disagreements, all on images where PyTorch's "
                f"top-2 logits are within {r['max_margin_of_disagreements']:.3g}"
            )


def _fail_below(report: dict, min_agreement: float) -> None:
    """Exit 1 (a failed check, not bad input: docs/errors.md) if a runtime agrees with PyTorch on fewer
    than ``min_agreement`` of the images."""
    worst = min(report["runtimes"].items(), key=lambda kv: kv[1]["agreement"])
    if worst[1]["agreement"] < min_agreement:
        click.echo(
            f"error: {worst[0]} agrees with PyTorch on {100 * worst[1]['agreement']:.2f}% of images "
            f"(< {100 * min_agreement:.2f}%)",
            err=True,
        )
        raise SystemExit(1)


COMMANDS = [export, verify]
