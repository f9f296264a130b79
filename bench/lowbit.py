"""Do low bits pay? The same subnets at W2A2, W3A3, W4A4 and W8A8, timed side by side (not a test).

Models: ``--subnets`` random subnets of qfa-mbv3-w1.2 @224 and, with ``--cifar10``, the CIFAR-10
preset's largest subnet @32; each exported at every uniform bit width (every block conv, the first
block and the final expand; the stem and classifier stay at the space's fixed 8 bits). Random weights,
BN and BatchQuant statistics set on random batches, as in bench/deploy_latency.py: the kernels do not
depend on the values, but the proofs that pick some of them do (int16 depthwise sums, one-FMA
epilogues), and those depend on the bits as a trained net's do. W8A8 lies outside the spaces' bit
choices (2-4): this script registers, in its own process only, a copy of each space with 8 added
(name + "+w8"); supernet, fold, export and compile are the ones a user's subnet goes through.

For each subnet and bit width, the artifact is compiled by ``compile_artifact`` for this host
(``--schedule``, default the export default) and measured:

- whole subnet: ms through the project's runner (threads pinned), each measurement in a fresh process
  (deploy_latency's ``_isolated``), ``--rounds`` interleaved rounds, the median reported;
- per layer: one more fresh process runs the VM with an instrument that times each call of a compiled
  function (``perf_counter`` around it: the instrument's few microseconds per call are in these
  figures, not in the whole-subnet ones), median over ``--repeat`` runs, grouped by kind: 1x1 convs
  (integer dot products), depthwise convs, and the rest (stem, squeeze-excite, pooling, classifier,
  quantizes, residual adds);
- constant bytes: ``meta["constant_bytes"]``, the library's constant sections (what ``size -A`` shows);
- with ``--simulate cortex-a72 [cortex-a76]``: the same subnets compiled for the Pi 4 / Pi 5 profile
  (``tiled-neon`` / ``tiled-dotprod``) and their cycles of one inference estimated by the ARM speed
  instrument (docs/simulation.md): simulated, not measured; deterministic, so one round.

Prints per subnet the ms at each bit width and its ratio to W4A4, then geometric means; the JSON keeps
every round, the per-layer medians and the constant bytes.

    python bench/lowbit.py --subnets 5 --cifar10 --threads 1 2 --json docs/results/lowbit.json
    python bench/lowbit.py --subnets 3 --cifar10 --threads --simulate cortex-a72 --json J   # ARM only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arm64 import ARM_DEVICES  # noqa: E402
from deploy_latency import SPACE, _in_rounds, _isolated, _tvm_ms, geomean  # noqa: E402

from qfa_deploy.atomic import atomic_write_bytes  # noqa: E402
from qfa_deploy.deploy.compile import DEFAULT_SCHEDULE, SCHEDULES  # noqa: E402
from qfa_deploy.space import create_space, list_spaces, register_space  # noqa: E402

BITS = (2, 3, 4, 8)
REFERENCE_BITS = 4
CIFAR10_SPACE = "qfa-mbv3-cifar10"
# compiled function name fragments -> the kind of layer (first match wins)
KINDS = (("1x1 conv", ("conv2d_int8", "conv2d_pairwise", "conv2d_bitserial")), ("depthwise", ("conv2d_codes",)))


def with_8_bits(name: str) -> str:
    """The name of a copy of space ``name`` whose convs may also take 8 bits (registered once)."""
    wide = f"{name}+w8"
    if wide not in list_spaces():
        space = create_space(name)
        register_space(dataclasses.replace(
            space, name=wide, bit_choices=(*space.bit_choices, 8),
            mix_bit_choices=(*space.mix_bit_choices, 8) if space.mix_bit_choices else ()))
    return wide


def kind_of(function: str) -> str:
    for kind, fragments in KINDS:
        if any(f in function for f in fragments):
            return kind
    return "other"


def _layer_us(folder: Path, device, warmup: int, repeat: int, resolution: int) -> list[tuple[str, float]]:
    """(function, median microseconds) of every compiled-function call of one inference, in order."""
    from qfa_deploy.deploy.parity import random_inputs
    from qfa_deploy.deploy.runner import open_session

    with open_session(device) as session:
        vm = session.load(folder / "model.so")
        x = random_inputs([{"name": "input", "shape": [1, 3, resolution, resolution], "dtype": "float32"}])
        for _ in range(warmup):
            session.run(vm, x)
        calls: list[tuple[str, float]] = []
        started: list[float] = []

        def instrument(func, symbol, before_run, ret_value, *args):
            now = time.perf_counter()
            if before_run:
                started.append(now)
            else:
                calls.append((symbol, now - started.pop()))
            return 0  # VMInstrumentReturnKind.kNoOp

        vm.set_instrument(instrument)
        runs = []
        for _ in range(repeat):
            calls.clear()
            session.run(vm, x)
            runs.append([(s, t) for s, t in calls if not s.startswith("vm.builtin.")])
    names = [s for s, _ in runs[0]]
    return [(name, 1e6 * statistics.median(run[j][1] for run in runs)) for j, name in enumerate(names)]


def by_kind(layers: list[tuple[str, float]]) -> dict[str, float]:
    out = {kind: 0.0 for kind, _ in KINDS} | {"other": 0.0}
    for name, us in layers:
        out[kind_of(name)] += us
    return out


def _models(args) -> list[tuple[str, object, int]]:
    """(label, config at the space's own bits, resolution) of every subnet measured."""
    from qfa_deploy.arch import ArchConfig, sample_arch

    rng = random.Random(args.seed)
    out = [(f"w1.2-{i}", sample_arch(SPACE, rng, resolutions=[args.resolution]), args.resolution)
           for i in range(args.subnets)]
    if args.cifar10:
        out.append(("cifar10-largest", ArchConfig.largest(CIFAR10_SPACE), 32))
    return out


def _export(cfg, bits: int, seed: int, path: Path) -> None:
    """``cfg`` at uniform ``bits`` (weights and activations) from a random supernet of its space (+w8)."""
    from qfa_deploy.arch import ArchConfig
    from qfa_deploy.calibrate import calibrate
    from qfa_deploy.export.onnx_export import export_onnx, save_onnx
    from qfa_deploy.extract import extract
    from qfa_deploy.fold import fold
    from qfa_deploy.nn.supernet import QFASupernet

    space = with_8_bits(cfg.space)
    wide = ArchConfig.from_dict({**cfg.to_dict(), "space": space}).with_uniform_bits(bits, bits)
    torch.manual_seed(seed)  # the same weights at every bit width
    subnet = extract(QFASupernet(space).eval(), wide)
    g = torch.Generator().manual_seed(seed)
    r = wide.resolution
    calibrate(subnet, (torch.randn(4, 3, r, r, generator=g) for _ in range(2)), r, 2)
    save_onnx(export_onnx(fold(subnet.eval()), batch=1), path)


def _simulated_cycles(onnx_path: Path, resolution: int, cpu: str, folder: Path) -> float:
    """Estimated cycles of one inference of the QDQ model ``onnx_path`` on ``cpu`` (the ARM instrument),
    compiled for its Pi profile into ``folder``."""
    from qfa_deploy.deploy import compile_artifact
    from qfa_deploy.deploy.emulated_pi import build_emulated_pi
    from qfa_deploy.deploy.sim.estimate import CPUS, simulate

    meta = compile_artifact(onnx_path, ARM_DEVICES[cpu], folder)
    image = build_emulated_pi()
    shape = [1, 3, resolution, resolution]
    return simulate("tvm", folder / meta["library"], CPUS[cpu], python=[str(image.python)],
                    env=image.one_thread_environment(), rootfs=image.cpu_root(cpu), shape=shape).cycles


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subnets", type=int, default=5, help="Random qfa-mbv3-w1.2 subnets (default 5).")
    parser.add_argument("--cifar10", action="store_true", help="Also the CIFAR-10 preset's largest subnet @32.")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--bits", type=int, nargs="+", default=list(BITS), choices=BITS)
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2], help="Thread counts timed here "
                        "(none: only --simulate).")
    parser.add_argument("--simulate", nargs="*", default=[], choices=list(ARM_DEVICES),
                        help="Also estimate the ARM cycles of each bit width on these cores (simulated).")
    parser.add_argument("--schedule", default=DEFAULT_SCHEDULE, choices=SCHEDULES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3,
                        help="Measure every bit width this many times, interleaved; report the median.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.repeat < 1 or min(args.threads, default=1) < 1:
        parser.error("--rounds, --repeat and --threads must be at least 1")
    if REFERENCE_BITS not in args.bits:
        parser.error(f"--bits must include {REFERENCE_BITS}: every ratio is to W{REFERENCE_BITS}A{REFERENCE_BITS}")

    from qfa_deploy.deploy import compile_artifact, load_device
    from qfa_deploy.deploy.device import host_cpu

    host = load_device("x86")
    labels = [f"W{b}A{b}" for b in args.bits]
    rows = []
    print(f"schedule {args.schedule}; batch 1; median of {args.repeat} runs, median of {args.rounds} rounds (ms)")
    with tempfile.TemporaryDirectory(prefix="qfa-lowbit-") as tmp:
        for m, (name, cfg, resolution) in enumerate(_models(args)):
            folders, constant_bytes, schedules = {}, {}, {}
            for bits, label in zip(args.bits, labels, strict=True):
                folder = Path(tmp) / f"{m}-{label}"
                _export(cfg, bits, args.seed + m, folder.with_suffix(".onnx"))
                meta = compile_artifact(folder.with_suffix(".onnx"), host, folder, schedule=args.schedule)
                folders[label] = folder
                constant_bytes[label], schedules[label] = meta["constant_bytes"], meta["schedule"]
            row = {"subnet": name, "arch": cfg.to_dict(), "resolution": resolution, "schedule": schedules,
                   "constant_bytes": constant_bytes, "threads": {}}
            for threads in args.threads:
                device = dataclasses.replace(host, threads=threads)
                w, r = args.warmup, args.repeat
                runs = {label: (_tvm_ms, folders[label], device, w, r, resolution) for label in labels}
                rounds_ms = _in_rounds(runs, args.rounds)
                ms = {label: statistics.median(v) for label, v in rounds_ms.items()}
                layers = {label: _isolated(_layer_us, folders[label], device, w, r, resolution) for label in labels}
                row["threads"][str(threads)] = {
                    "ms": ms, "rounds_ms": rounds_ms,
                    "ratio_to_w4a4": {label: ms[label] / ms[f"W{REFERENCE_BITS}A{REFERENCE_BITS}"] for label in labels},
                    "layers_us": layers, "by_kind_us": {label: by_kind(v) for label, v in layers.items()},
                }
                ratios = row["threads"][str(threads)]["ratio_to_w4a4"]
                print(f"{name:<16} {threads}T " + "  ".join(f"{lb} {ms[lb]:8.3f} ({ratios[lb]:.2f}x)" for lb in labels),
                      flush=True)
            for cpu in args.simulate:
                # the x86 artifact's own QDQ model (same weights), compiled for the Pi
                cycles = {label: _simulated_cycles(folders[label].with_suffix(".onnx"), resolution, cpu,
                                                   Path(tmp) / f"{m}-{label}-{cpu}") for label in labels}
                row.setdefault("simulated_cycles", {})[cpu] = cycles
                print(f"{name:<16} {cpu} (simulated) " + "  ".join(
                    f"{lb} {cycles[lb] / 1e6:8.2f} M ({cycles[lb] / cycles['W4A4']:.3f}x)" for lb in labels),
                    flush=True)
            print(f"{name:<16} constant bytes " + "  ".join(
                f"{lb} {constant_bytes[lb]} ({constant_bytes[lb] / constant_bytes['W4A4']:.2f}x)" for lb in labels))
            rows.append(row)
    summary = {}
    for threads in map(str, args.threads):
        for group, members in (("w1.2", [r for r in rows if r["subnet"].startswith("w1.2")]),
                               ("cifar10", [r for r in rows if r["subnet"] == "cifar10-largest"])):
            if members:
                summary[f"{group}/{threads}T"] = {
                    label: geomean(r["threads"][threads]["ratio_to_w4a4"][label] for r in members) for label in labels}
    for cpu in args.simulate:
        for group, members in (("w1.2", [r for r in rows if r["subnet"].startswith("w1.2")]),
                               ("cifar10", [r for r in rows if r["subnet"] == "cifar10-largest"])):
            if members:
                summary[f"{group}/{cpu} (simulated)"] = {label: geomean(
                    r["simulated_cycles"][cpu][label] / r["simulated_cycles"][cpu]["W4A4"] for r in members)
                    for label in labels}
    for key, ratios in summary.items():
        print(f"geomean {key:<12} " + "  ".join(f"{lb} {v:.3f}x" for lb, v in ratios.items()))
    bytes_ratio = {label: geomean(r["constant_bytes"][label] / r["constant_bytes"]["W4A4"] for r in rows)
                   for label in labels}
    print("constant bytes / W4A4 (geomean): " + "  ".join(f"{lb} {v:.3f}x" for lb, v in bytes_ratio.items()))
    if args.json:
        payload = {"schedule": args.schedule, "bits": args.bits, "threads": args.threads, "rounds": args.rounds,
                   "repeat": args.repeat, "geomean_ratio_to_w4a4": summary, "constant_bytes_ratio_to_w4a4": bytes_ratio,
                   "cpu": host_cpu(), "torch": torch.__version__, "rows": rows}
        atomic_write_bytes(args.json, lambda f: f.write(json.dumps(payload, indent=1).encode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
