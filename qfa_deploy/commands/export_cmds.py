"""``export`` and ``verify``: a subnet to a deployable artifact folder, and its parity report."""

from __future__ import annotations

from pathlib import Path

import click

from qfa_deploy.commands.common import emit_json, load_supernet, schedule_option, set_threads
from qfa_deploy.commands.options import COUNT, PROPORTION, THREADS, calib_batches_option
from qfa_deploy.errors import QfaError

__all__ = ["COMMANDS"]

CALIB_BATCH_SIZE = 100


def _compiler(target: str, schedule: str):
    """``compile_artifact`` of the TVM deploy module, checked before any work is done."""
    try:
        from qfa_deploy.deploy.compile import compile_artifact
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("qfa_deploy"):
            raise QfaError(f"target {target!r} needs the TVM compile module (qfa_deploy.deploy.compile)") from None
        raise
    try:
        from qfa_deploy.deploy.device import load_device
    except ImportError:
        pass
    else:
        device = load_device(target)  # unknown device -> QfaError now, not after calibration
        if device.target_kind == "cuda":  # likewise a bad $QFA_CUDA_KERNELS, or fatbin without nvcc
            from qfa_deploy.deploy.cuda import check_cuda_request

            check_cuda_request()
    return lambda onnx_path, device, out_dir: compile_artifact(onnx_path, device, out_dir, schedule=schedule)


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
def export(arch_path, target, checkpoint, calib_batches, data_dir, out, force, threads, schedule):
    """Calibrate, fold and export a subnet: OUT/model.onnx (QDQ) and OUT/meta.json.

    With --calib-batches 0 the subnet keeps the checkpoint's stored statistics and no data is read.
    """
    from qfa_deploy.arch import load_arch
    from qfa_deploy.atomic import check_output
    from qfa_deploy.data import calibration_images
    from qfa_deploy.export.artifact import (
        CALIBRATION_SEED,
        build_artifact,
        calibrate_for_export,
        staged_directory,
    )
    from qfa_deploy.reference import default_checkpoint

    set_threads(threads)
    if calib_batches < 0:  # click's range refuses it first; a direct call of the callback too
        raise QfaError("--calib-batches must be at least 0")
    load_arch(arch_path)  # missing or malformed config: fail before anything is written
    compile_fn = None if target == "onnx" else _compiler(target, schedule)
    ckpt = Path(checkpoint) if checkpoint else default_checkpoint()
    check_output(out, force, folder=True, option="--out")  # its parent exists and is writable: before the work
    with staged_directory(out, force) as folder:
        net = load_supernet(str(ckpt))
        cfg = load_arch(arch_path, expect_space=net.space.name)
        if calib_batches == 0:  # the checkpoint's stored statistics; no data is read
            subnet = calibrate_for_export(net, cfg, None, 0, CALIB_BATCH_SIZE)
            calibration = {
                "split": None,
                "batches": 0,
                "batch_size": CALIB_BATCH_SIZE,
                "images": 0,
                "statistics": "stored",
                "data_dir": None,
            }
        else:
            val = calibration_images(net.space, data_dir, calib_batches * CALIB_BATCH_SIZE)
            subnet = calibrate_for_export(net, cfg, val, calib_batches, CALIB_BATCH_SIZE)
            calibration = {
                "split": "val",
                "batches": calib_batches,
                "batch_size": CALIB_BATCH_SIZE,
                "images": min(len(val), calib_batches * CALIB_BATCH_SIZE),
                "seed": CALIBRATION_SEED,
                "data_dir": str(Path(data_dir).resolve()) if data_dir else None,
            }
        meta = build_artifact(
            folder, subnet, target=target, checkpoint=ckpt, calibration=calibration, compile_fn=compile_fn
        )
    files = ", ".join(meta["files"])
    click.echo(f"wrote {out} ({files}, meta.json) for {cfg.short()}")


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

    from qfa_deploy.export.verify import RUNTIMES, verify_artifact

    set_threads(threads)
    if limit is not None and limit < 1:
        raise QfaError("--limit must be at least 1")
    names = None
    if runtimes:
        names = [r.strip() for r in runtimes.split(",") if r.strip()]
        unknown = [r for r in names if r not in RUNTIMES]
        if unknown:
            raise QfaError(f"unknown runtime {unknown[0]!r} (known: {', '.join(RUNTIMES)})")
    report = verify_artifact(folder, limit=limit, data_dir=data_dir, runtimes=names, threads=torch.get_num_threads())
    if as_json:
        emit_json(report)
    else:
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
        click.echo(
            f"{'runtime':<13}{'top-1':>8} {'agree':>8} {'max|dlogit|':>12}   "
            f"{'vs ort_noopt: agree':>19} {'max|dlogit|':>12} {'seconds':>8}"
        )
        for name, r in report["runtimes"].items():
            top1 = f"{100 * r['top1']:7.2f}%" if "top1" in r else f"{'-':>8}"
            if "agreement_vs_ort_noopt" in r:
                vs_ort = f"{100 * r['agreement_vs_ort_noopt']:18.2f}% {r['max_abs_logit_diff_vs_ort_noopt']:12.3g}"
            else:
                vs_ort = f"{'-':>19} {'-':>12}"
            click.echo(
                f"{name:<13}{top1} {100 * r['agreement']:7.2f}% {r['max_abs_logit_diff']:12.3g}   "
                f"{vs_ort} {r['seconds']:8.1f}"
            )
        for name, r in report["runtimes"].items():
            if r["disagreements"]:
                click.echo(
                    f"{name}: {r['disagreements']} top-1 disagreements, all on images where PyTorch's "
                    f"top-2 logits are within {r['max_margin_of_disagreements']:.3g}"
                )
        click.echo(f"{report['images']} test images, logits up to {report['logit_range']:.3g}")
    worst = min(report["runtimes"].items(), key=lambda kv: kv[1]["agreement"])
    if worst[1]["agreement"] < min_agreement:  # a failed check, not bad input: exit 1 (docs/errors.md)
        click.echo(
            f"error: {worst[0]} agrees with PyTorch on {100 * worst[1]['agreement']:.2f}% of images "
            f"(< {100 * min_agreement:.2f}%)",
            err=True,
        )
        raise SystemExit(1)


COMMANDS = [export, verify]
