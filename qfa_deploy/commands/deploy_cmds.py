"""``devices``, ``compile``, ``profile``, ``tune`` and ``emulated-pi``: TVM builds and device measurements."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click

from qfa_deploy.commands.common import emit_json, schedule_option, write_text_atomic
from qfa_deploy.commands.options import SEED, TIMEOUT
from qfa_deploy.deploy.compile import DEBUG_SYMBOLS_HELP
from qfa_deploy.deploy.cpu_share import over_limit
from qfa_deploy.errors import QfaError

__all__ = ["COMMANDS"]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def devices(as_json):
    """List the device profiles (devices/*.json and $QFA_DEVICES)."""
    from qfa_deploy.deploy.compile import resolve_schedule
    from qfa_deploy.deploy.device import ALIASES, list_devices, load_device

    profiles = [load_device(name) for name in list_devices()]
    schedules = {dev.name: resolve_schedule("auto", dev) for dev in profiles}  # what "auto" compiles with
    if as_json:
        emit_json({"devices": [{**d.to_dict(), "source": d.source, "resolved_schedule": schedules[d.name]}
                               for d in profiles], "aliases": ALIASES})
        return
    for dev in profiles:
        where = dev.runner.kind
        if dev.runner.kind == "simulated":
            where += f" {dev.runner.cpu}"
        elif dev.runner.kind != "local":
            where += f" {dev.runner.address}" + (f" key {dev.runner.key}" if dev.runner.key else "")
        target = dev.target if isinstance(dev.target, str) else json.dumps(dev.target)
        emulated = "  emulated" if dev.emulated else ""
        click.echo(f"{dev.name:18s} {schedules[dev.name]:14s} {target}  [{where}]{emulated}")
    click.echo("aliases: " + ", ".join(f"{k} -> {v}" for k, v in ALIASES.items()))


@click.command("compile")
@click.argument("onnx_file", type=click.Path(dir_okay=False))
@click.option("--device", "-d", required=True, help="Device name, alias (x86, arm64, cuda) or profile .json.")
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Artifact folder: model.so, model.onnx, meta.json.")
@click.option("--database", type=click.Path(file_okay=False), default=None,
              help="MetaSchedule database from `qfa-deploy tune` to apply.")
@schedule_option
@click.option("--debug-symbols", is_flag=True, help=DEBUG_SYMBOLS_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print meta.json.")
@click.option("--force", is_flag=True, help="Replace --out if it exists (once the new folder is complete).")
def compile_cmd(onnx_file, device, out_dir, database, schedule, debug_symbols, as_json, force):
    """Compile a QDQ ONNX model with TVM for DEVICE into an artifact folder."""
    from qfa_deploy.atomic import check_output, staged_directory
    from qfa_deploy.deploy.compile import compile_artifact
    from qfa_deploy.deploy.device import load_device
    from qfa_deploy.deploy.profile import META_NAME, ONNX_NAME

    src, out = Path(onnx_file), Path(out_dir)
    if not src.is_file():
        raise QfaError(f"{src}: no such ONNX file")
    load_device(device)  # an unknown device or a taken --out: refused before the compile, not after it
    check_output(out, force, folder=True, option="--out", inputs=(src, database))
    with staged_directory(out, force) as folder:  # --out appears complete or not at all
        meta = compile_artifact(src, device, folder, database=Path(database) if database else None,
                                schedule=schedule, debug_symbols=debug_symbols)
        try:
            shutil.copyfile(src, folder / ONNX_NAME)
        except OSError as exc:
            raise QfaError(f"cannot copy {src}: {exc.strerror or exc}") from None
        meta = {"onnx": ONNX_NAME, **meta}
        write_text_atomic(folder / META_NAME, json.dumps(meta, indent=2) + "\n")
    if as_json:
        emit_json(meta)
        return
    click.echo(f"{out / meta['library']}  ({meta['device']}, TVM {meta['tvm_version']}, schedule {meta['schedule']}, "
               f"{meta['compile_seconds']:.1f} s, sha256 {meta['library_sha256'][:12]})")


@click.command()
@click.argument("artifact_dir", type=click.Path(file_okay=False))
@click.option("--device", "-d", required=True, help="Device name, alias or profile .json.")
@click.option("--tracker", default=None, help="HOST:PORT of the RPC tracker (replaces the profile's).")
@click.option("--key", default=None, help="Tracker key (replaces the profile's).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the random input.")
@click.option("--timeout", type=TIMEOUT, default=30.0, show_default=True,
              help="Seconds to reach the device and be granted a board.")
@click.option("--no-check", is_flag=True, help="Skip the comparison with onnxruntime.")
@click.option("--layers", is_flag=True,
              help="Also where the time goes: per kind of layer and the slowest functions (this machine or a "
                   "simulated device).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def profile(artifact_dir, device, tracker, key, seed, timeout, no_check, layers, as_json):
    """Measure an artifact's latency on DEVICE and check its output against onnxruntime."""
    from qfa_deploy.deploy.profile import profile_artifact

    result = profile_artifact(Path(artifact_dir), device, tracker=tracker, key=key, seed=seed,
                              timeout=timeout, check=not no_check, layers=layers)
    if as_json:
        emit_json(result)
        return
    runner = result["runner"]
    where = runner["kind"] + (f" {runner['host']}:{runner['port']}" if "host" in runner else "")
    where += f" key {runner['key']}" if "key" in runner else ""
    where += f" {runner['cpu']}" if "cpu" in runner else ""
    lat, proto = result["latency_ms"], result["protocol"]
    click.echo(f"device   {result['device']} ({where})")
    click.echo(f"{result['timing']}: median {lat['median']:.3f} ms  p10 {lat['p10']:.3f}  p90 {lat['p90']:.3f}")
    click.echo(f"protocol warmup {proto['warmup']}, {proto['repeat']} repeats x {proto['number']} runs "
               f"(>= {proto['min_repeat_ms']} ms each), {proto['threads']} threads")
    if over_limit(lat.get("foreign_cpu")):
        click.echo(f"warning  other work took {100 * lat['foreign_cpu']:.0f}% of the measuring CPUs meanwhile: "
                   "this latency is too high; measure on a core of its own (e.g. taskset -c N)")
    parity = result["parity"]
    if parity:
        exact = "bit-exact" if parity["bit_exact"] else f"max |diff| {parity['max_abs_diff']:.3g}"
        agree = "agrees" if parity["argmax_agree"] else "DIFFERS"
        click.echo(f"parity   vs {parity['reference']}: {exact}, argmax {agree}")
    if result["layers"]:
        _echo_layers(result["layers"], lat["median"])


def _echo_layers(layers: dict, latency_ms: float, top: int = 10) -> None:
    """The kinds of layer by time, then the ``top`` functions."""
    click.echo(f"layers   {layers['source']}, medians: {layers['sum_ms']:.3f} ms in all "
               f"({latency_ms:.3f} ms timed above)")
    for kind in layers["kinds"]:
        calls = "" if kind["calls"] is None else f" {kind['calls']:6.0f} calls"
        click.echo(f"  {kind['ms']:8.3f} ms {100 * kind['share']:5.1f}%{calls}  {kind['kind']}")
    click.echo(f"  slowest {min(top, len(layers['functions']))} of {len(layers['functions'])} functions:")
    for row in layers["functions"][:top]:
        calls = "" if row["calls"] is None else f" x{row['calls']:g}"
        click.echo(f"  {row['ms']:8.3f} ms {100 * row['share']:5.1f}%  {row['function']}{calls}")


@click.command()
@click.argument("onnx_file", required=False, type=click.Path(dir_okay=False))
@click.option("--space", default=None, help="Tune subnets of this space instead of one ONNX file.")
@click.option("--resolution", type=click.IntRange(1, 4096), default=224, show_default=True,
              help="With --space: input resolution.")
@click.option("--subnets", type=click.IntRange(1, 10_000), default=3, show_default=True,
              help="With --space: how many subnets (largest, smallest, then random).")
@click.option("--device", "-d", default="x86", show_default=True, help="A local CPU device profile.")
@click.option("--trials", type=click.IntRange(1, 1_000_000), default=16, show_default=True,
              help="MetaSchedule trials per workload.")
@click.option("--database", type=click.Path(file_okay=False), default=None,
              help="Database folder (default ~/.cache/qfa-deploy/tuning/DEVICE); resumable.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def tune(onnx_file, space, resolution, subnets, device, trials, database, seed, as_json):
    """Tune the TIR workloads of a model (or of --space subnets) with MetaSchedule for DEVICE."""
    import tempfile

    from qfa_deploy.atomic import check_output
    from qfa_deploy.deploy.device import load_device
    from qfa_deploy.deploy.tune import default_database_dir, tune_model
    from qfa_deploy.export.tuning_models import space_models

    if (onnx_file is None) == (space is None):
        raise QfaError("give an ONNX file or --space NAME (one of them)")
    if onnx_file is not None and not Path(onnx_file).is_file():
        raise QfaError(f"{onnx_file}: no such ONNX file")
    dev = load_device(device)
    if database:  # a database adds up across runs; its parent must exist (the default one is created)
        check_output(database, folder=True, append=True, option="--database")
    db = Path(database) if database else default_database_dir(dev)
    created = not db.exists()  # the database accumulates across runs; only a folder this run made is litter
    try:
        with tempfile.TemporaryDirectory(prefix="qfa-tune-") as tmp:
            models = [Path(onnx_file)] if onnx_file else space_models(space, resolution, subnets, Path(tmp), seed)
            reports = [tune_model(m, dev, db, trials=trials, progress=not as_json) for m in models]
    except BaseException:
        if created and db.is_dir() and not any(db.iterdir()):
            db.rmdir()
        raise
    summary = {"database": str(db), "models": len(models), "tuned": sum(r["tuned"] for r in reports),
               "skipped": sum(r["skipped"] for r in reports), "trials_per_task": trials,
               "database_sha256": reports[-1]["database_sha256"]}
    if as_json:
        emit_json(summary)
        return
    click.echo(f"{db}: {summary['tuned']} workloads tuned, {summary['skipped']} already there "
               f"({trials} trials each); compile with --database {db}")


@click.group("emulated-pi")
def emulated_pi():
    """An emulated Raspberry Pi 4 (arm64 Debian + TVM under qemu-user) serving TVM RPC on 127.0.0.1."""


@emulated_pi.command("build")
@click.option("--cache", type=click.Path(file_okay=False), default=None,
              help="Folder for the image (default ~/.cache/qfa-deploy/emulated-pi).")
def emulated_pi_build(cache):
    """Build the image once (debootstrap + aarch64 wheels; resumable)."""
    from qfa_deploy.deploy.emulated_pi import build_emulated_pi

    image = build_emulated_pi(_cache_folder(cache))
    click.echo(f"emulated Pi ready in {image.root}")


@emulated_pi.command("serve")
@click.option("--port", type=click.IntRange(1, 65535), default=9190, show_default=True,
              help="Tracker port on 127.0.0.1 (started unless one answers there).")
@click.option("--key", default="rasp4b-emu", show_default=True, help="Key the server registers under.")
@click.option("--cache", type=click.Path(file_okay=False), default=None, help="Image folder (see build).")
def emulated_pi_serve(port, key, cache):
    """Serve TVM RPC from the emulated Pi until interrupted (profile with --device rasp4b-emulated)."""
    import signal
    import time

    from qfa_deploy.deploy.emulated_pi import EmulatedPi, build_emulated_pi

    if not 0 < port < 65536:
        raise QfaError(f"--port must be a TCP port, not {port}")
    image = build_emulated_pi(_cache_folder(cache))
    signal.signal(signal.SIGTERM, _interrupt)  # stop qemu and the tracker on `kill` too
    click.echo("starting the emulated Pi (TVM takes ~30 s to import under qemu) ...", err=True)
    with EmulatedPi(image, key=key, tracker_port=port) as pi:
        click.echo(f"serving: tracker {pi.tracker_address}, key {key}; Ctrl-C stops", err=True)
        while pi.server.alive():
            time.sleep(1.0)
        raise QfaError(f"the emulated Pi server exited: {pi.server.log_tail()}")


def _interrupt(*_):
    raise KeyboardInterrupt


COMMANDS = [devices, compile_cmd, profile, tune, emulated_pi]


def _cache_folder(cache: str | None) -> Path | None:
    """``--cache``: built into or reused; its parent must exist (the default's is made)."""
    from qfa_deploy.atomic import check_output

    if cache is None:
        return None
    return check_output(cache, folder=True, append=True, option="--cache")
