"""ARM speed by simulation (issue 23): the artifact against the aarch64 peers on Cortex-A72 (Pi 4) and
Cortex-A76 (Pi 5), and the instrument's own check on x86 where real times exist. Not a test.

Every figure is SIMULATED (qfa_deploy.deploy.sim, docs/simulation.md): each runtime runs one thread
under qemu-user twice, with 1 and 3 inferences; the extra inferences' basic blocks are counted by a
TCG plugin and priced by llvm-mca's model of the CPU (steady state, L1-resident memory), summed.

Models: ``--subnets`` random subnets of qfa-mbv3-w1.2 @224 (random weights, as bench/deploy_latency.py)
and, with ``--cifar10``, the CIFAR-10 preset (embedded supernet, export/cifar10-largest-w4a4.json).
Columns per CPU:

- artifact      the project's QDQ ONNX compiled for rasp4b (tiled-neon, A72) / rasp5 (tiled-dotprod, A76)
- ort-qdq       that same QDQ ONNX on onnxruntime (aarch64 wheel 1.27.0: newer ones crash under qemu 7.2)
- ort-int8      the float subnet quantized by onnxruntime's quantize_static (QDQ, per-channel)
- ort-fp32      the float subnet on onnxruntime
- tflite-int8   the float subnet, full-integer TFLite (onnx2tf + TFLiteConverter PTQ, bench/tflite_peer.py),
                LiteRT 2.3.0 with XNNPACK (needs the converter venv: bench/setup_tflite_converter.sh)
- tflite-builtin  that .tflite on LiteRT's builtin kernels without XNNPACK (its XNNPACK has no 7x7
                depthwise kernel nor int8 hard-swish, and is no faster on these nets)

The x86 validation (``--validate N``, default 2 subnets) runs the same procedure for znver4 on AVX2
builds of the same subnets (qemu has no AVX-512) and times the same files natively on this host: the
TVM artifacts (schedules tiled-cpu and generic: the same machine code both ways) give the agreement;
onnxruntime is shown too but runs AVX-512 kernels natively and AVX2 ones under qemu (ISA differs).

    python bench/arm64.py --subnets 5 --cifar10 --json docs/results/arm64_simulated.json

Resumable: every estimate is journaled in --work (default ~/.cache/qfa-deploy/bench-arm64).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from deploy_latency import SPACE, _export_float, _full_precision, _ort_int8, _qdq_model, geomean  # noqa: E402

from qfa_deploy.atomic import atomic_write_bytes  # noqa: E402
from qfa_deploy.deploy.sim.estimate import CPUS, SIM_VERSION, host_python_env, simulate  # noqa: E402

ARM_DEVICES = {"cortex-a72": "rasp4b", "cortex-a76": "rasp5"}
PEERS = ("ort-qdq", "ort-int8", "ort-fp32", "tflite-int8", "tflite-builtin")
VALIDATION_COLUMNS = {"artifact-avx2": "tiled-cpu", "artifact-generic": "generic"}
AVX2_DEVICE = {"version": 1, "name": "x86-avx2-sim",
               "description": "x86-64 with AVX2 only (znver3 ISA): runs natively here and under qemu-x86_64.",
               "target": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver3"}, "cc": None,
               "runner": {"kind": "local"}, "threads": 1,
               "protocol": {"warmup": 3, "number": 1, "repeat": 10, "min_repeat_ms": 0}, "emulated": False}


class Journal:
    """{key: result} on disk, rewritten atomically after each result: a killed run loses one estimate."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}

    def get(self, key: str, compute, *args, **kwargs):
        if key not in self.data:
            self.data[key] = compute(*args, **kwargs)
            atomic_write_bytes(self.path, lambda f: f.write(json.dumps(self.data, indent=1).encode()))
        return self.data[key]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _random_subnet(seed: int, resolution: int):
    """(cfg, quantized subnet, float subnet, calibration images) of a random w1.2 subnet."""
    from qfa_deploy.arch import sample_arch
    from qfa_deploy.calibrate import calibrate
    from qfa_deploy.extract import extract
    from qfa_deploy.nn.supernet import QFASupernet

    torch.manual_seed(seed)
    cfg = sample_arch(SPACE, random.Random(seed), resolutions=[resolution])
    subnet = extract(QFASupernet(SPACE).eval(), cfg)
    fp_net = _full_precision(subnet)
    for net in (subnet, fp_net):
        g = torch.Generator().manual_seed(seed)
        batches = [torch.randn(4, 3, resolution, resolution, generator=g) for _ in range(2)]
        calibrate(net, iter(batches), resolution, 2)
    return cfg, subnet.eval(), fp_net, torch.cat(batches).numpy()


def _cifar10_subnet():
    from tflite_peer import cifar10_float_subnet

    from qfa_deploy.arch import load_arch
    from qfa_deploy.calibrate import calibrate
    from qfa_deploy.checkpoint import load_supernet
    from qfa_deploy.data import calibration_images
    from qfa_deploy.extract import extract
    from qfa_deploy.reference import default_checkpoint

    fp_net, cfg, images = cifar10_float_subnet()
    supernet = load_supernet(default_checkpoint())
    cfg = load_arch(HERE.parent / "export" / "cifar10-largest-w4a4.json", expect_space=supernet.space.name)
    supernet.set_active(cfg)
    subnet = extract(supernet, cfg)
    source = calibration_images(supernet.space, images=2000)
    calibrate(subnet, (x for x, _ in source.batches(100)), cfg.resolution, 20)
    return cfg, subnet.eval(), fp_net, images


def prepare(name: str, cfg, subnet, fp_net, images: np.ndarray, folder: Path, with_tflite: bool,
            validate: bool) -> dict[str, Path]:
    """The model files of one subnet (made once per folder)."""
    from qfa_deploy.deploy import compile_artifact

    folder.mkdir(parents=True, exist_ok=True)
    res = cfg.resolution
    files = {"qdq": folder / "qdq.onnx", "fp32": folder / "fp32.onnx", "ort-int8": folder / "ort-int8.onnx"}
    if not files["qdq"].is_file():
        _qdq_model(subnet, files["qdq"])
        _export_float(fp_net, res, files["fp32"])
        _ort_int8(files["fp32"], files["ort-int8"], res)
    devices = dict(ARM_DEVICES)
    if validate:
        avx2 = folder / "x86-avx2-sim.json"
        avx2.write_text(json.dumps(AVX2_DEVICE))
        devices |= {column: str(avx2) for column in VALIDATION_COLUMNS}
    for key, device in devices.items():
        out = folder / key
        if not (out / "model.so").is_file():
            print(f"  {name}: compiling for {key}", flush=True)
            compile_artifact(files["qdq"], device, out, schedule=VALIDATION_COLUMNS.get(key, "auto"))
        files[key] = out / "model.so"
    if with_tflite:
        from tflite_peer import make_tflite_int8

        files["tflite-int8"] = make_tflite_int8(files["fp32"], images[:8], folder / "int8.tflite")
    return files


def arm_runtime(column: str) -> str:
    return {"ort-qdq": "ort", "ort-int8": "ort", "ort-fp32": "ort", "tflite-int8": "tflite",
            "tflite-builtin": "tflite-builtin"}.get(column, "tvm")


def column_file(files: dict[str, Path], column: str, cpu: str) -> Path:
    if column == "artifact":
        return files[cpu]
    return files[{"ort-qdq": "qdq", "ort-fp32": "fp32", "tflite-builtin": "tflite-int8"}.get(column, column)]


def _estimate(runtime: str, path: Path, cpu: str, **kwargs) -> dict:
    return simulate(runtime, path, CPUS[cpu], **kwargs).to_dict()


def _cycles(estimate: dict, cpu: str) -> float:
    """Cycles of a journaled estimate under the current miss exposure (misses are journaled, not cycles)."""
    return estimate["core_cycles"] + CPUS[cpu].memory_cycles(estimate["misses"])


def native_ms(runtime: str, path: Path, shape: list[int], repeat: int = 20) -> float:
    """Median ms of ``repeat`` runs in a fresh process pinned to one core (this host, natively)."""
    from qfa_deploy.deploy.sim.estimate import INFER_MAIN

    python, env = host_python_env()
    core = sorted(os.sched_getaffinity(0))[-1]
    done = subprocess.run(["taskset", "-c", str(core), *python, str(INFER_MAIN), runtime, str(path), str(repeat),
                           "--shape", ",".join(map(str, shape)), "--time"], env=env, capture_output=True, text=True,
                          check=True)
    return float(done.stdout.strip().splitlines()[-1])


def _spearman(a: list[float], b: list[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        for rank, i in enumerate(order):
            r[i] = rank
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.mean(ra), statistics.mean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subnets", type=int, default=5)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cifar10", action="store_true", help="Also the CIFAR-10 preset (largest W4A4).")
    parser.add_argument("--cpus", nargs="+", default=list(ARM_DEVICES), choices=list(ARM_DEVICES))
    parser.add_argument("--validate", type=int, default=2, help="x86 validation on this many of the subnets.")
    parser.add_argument("--no-tflite", action="store_true", help="Leave out the TFLite peer.")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "qfa-deploy" / "bench-arm64")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--profile", action="store_true",
                        help="Also print where the artifact's simulated cycles go, function by function.")
    args = parser.parse_args(argv)

    from qfa_deploy.deploy.emulated_pi import build_emulated_pi, build_peer_site

    image = build_emulated_pi()
    peer_site = build_peer_site(image)
    arm_env = image.one_thread_environment(peer_site)
    x86_python, x86_env = host_python_env()
    args.work.mkdir(parents=True, exist_ok=True)
    journal = Journal(args.work / "journal.json")
    columns = ("artifact", *(p for p in PEERS if not (p.startswith("tflite") and args.no_tflite)))

    subnets = [(f"w1.2-{args.seed + i}", lambda s=args.seed + i: _random_subnet(s, args.resolution))
               for i in range(args.subnets)]
    if args.cifar10:
        subnets.append(("cifar10-largest-w4a4", _cifar10_subnet))
    rows, validation = [], []
    for index, (name, make) in enumerate(subnets):
        cfg, subnet, fp_net, images = make()
        validate = index < args.validate and name.startswith("w1.2")
        files = prepare(name, cfg, subnet, fp_net, images, args.work / name, not args.no_tflite, validate)
        shape = [1, 3, cfg.resolution, cfg.resolution]
        row = {"subnet": name, "arch": cfg.to_dict(), "cycles": {}, "instructions": {}, "coverage": {}}
        for cpu in args.cpus:
            root, python = image.cpu_root(cpu), [str(image.python)]
            for column in columns:
                path = column_file(files, column, cpu)
                key = f"{name}|{cpu}|{column}|{_digest(path)}|{SIM_VERSION}"
                start = time.perf_counter()
                est = journal.get(key, _estimate, arm_runtime(column), path, cpu, python=python, env=arm_env,
                                  rootfs=root, shape=shape)
                row["cycles"].setdefault(cpu, {})[column] = _cycles(est, cpu)
                row.setdefault("estimates", {}).setdefault(cpu, {})[column] = est
                row["instructions"].setdefault(cpu, {})[column] = est["instructions"]
                row["coverage"].setdefault(cpu, {})[column] = est["coverage"]
                print(f"  {name:<22} {cpu:<11} {column:<12} {_cycles(est, cpu) / 1e6:10.2f} M cycles "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
            cycles = row["cycles"][cpu]
            best = min((p for p in PEERS if p in cycles), key=cycles.get)
            row.setdefault("ratio_to_best_peer", {})[cpu] = cycles["artifact"] / cycles[best]
            row.setdefault("best_peer", {})[cpu] = best
        if args.profile:
            row["functions"] = _profile(files, shape, args.cpus, image, arm_env)
        rows.append(row)
        if validate:
            validation.append(_validate_one(name, files, shape, journal, x86_python, x86_env))
    report = _report(rows, validation, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def _profile(files: dict[str, Path], shape: list[int], cpus: list[str], image, env: dict) -> dict:
    from qfa_deploy.deploy.sim.functions import function_profile

    out = {}
    for cpu in cpus:
        out[cpu] = function_profile("tvm", files[cpu], CPUS[cpu], python=[str(image.python)], env=env,
                                    rootfs=image.cpu_root(cpu), shape=shape, top=15)
        print(f"  where the artifact's cycles go on {cpu} (simulated):")
        for f in out[cpu]:
            print(f"    {100 * f['share']:5.1f}%  {f['cycles'] / 1e6:8.2f} M cycles (core {f['core_cycles'] / 1e6:6.2f}"
                  f" + memory {f['memory_cycles'] / 1e6:6.2f})  {f['instructions'] / 1e6:8.2f} M instr"
                  f"  {f['function']}")
    return out


def _validate_one(name: str, files: dict[str, Path], shape: list[int], journal: Journal, python, env) -> dict:
    """Simulated znver4 cycles and native medians of the same x86 files."""
    out = {"subnet": name, "cycles": {}, "ms": {}}
    for column in (*VALIDATION_COLUMNS, "ort-qdq", "ort-fp32"):
        path = files[column] if column in VALIDATION_COLUMNS else column_file(files, column, "")
        runtime = "tvm" if column in VALIDATION_COLUMNS else "ort"
        key = f"{name}|znver4|{column}|{_digest(path)}|{SIM_VERSION}"
        est = journal.get(key, _estimate, runtime, path, "znver4", python=python, env=env, shape=shape)
        out.setdefault("estimates", {})[column] = est
        out["cycles"][column] = _cycles(est, "znver4")
        out["ms"][column] = native_ms(runtime, path, shape)
        print(f"  {name:<22} znver4      {column:<16} {out['cycles'][column] / 1e6:10.2f} M cycles, "
              f"native {out['ms'][column]:.2f} ms", flush=True)
    return out


def _report(rows: list[dict], validation: list[dict], args) -> dict:
    report = {"simulated": True, "instrument": "qemu-user block counts x llvm-mca steady-state cycles "
              "(qfa_deploy.deploy.sim)", "cpus": {c: CPUS[c].note for c in args.cpus}, "rows": rows}
    print("\nSIMULATED cycles per inference (millions), one thread; artifact / best peer")
    for cpu in args.cpus:
        names = [c for c in ("artifact", *PEERS) if c in rows[0]["cycles"][cpu]]
        print(f"{cpu}: " + "  ".join(f"{n}" for n in names))
        for row in rows:
            cyc = row["cycles"][cpu]
            print(f"  {row['subnet']:<22} " + " ".join(f"{cyc[n] / 1e6:9.2f}" for n in names)
                  + f"   {row['ratio_to_best_peer'][cpu]:.2f}x ({row['best_peer'][cpu]})")
        geo = {n: geomean(r["cycles"][cpu][n] for r in rows) for n in names}
        best = min((n for n in names if n != "artifact"), key=geo.get)
        ms = {n: geo[n] / (CPUS[cpu].ghz * 1e6) for n in names}
        report.setdefault("geomean_cycles", {})[cpu] = geo
        report.setdefault("geomean_ms_at_nominal_clock", {})[cpu] = ms
        report.setdefault("geomean_ratio_to_best_peer", {})[cpu] = geo["artifact"] / geo[best]
        report.setdefault("best_peer", {})[cpu] = best
        print(f"  geomean artifact / best peer ({best}): {geo['artifact'] / geo[best]:.2f}x "
              f"(artifact ~{ms['artifact']:.1f} ms at {CPUS[cpu].ghz} GHz, simulated)")
    if validation:
        report["x86_validation"] = _agreement(validation)
    return report


def _agreement(validation: list[dict]) -> dict:
    """How the znver4 estimates track native medians: ratios to the tiled-cpu artifact, and ranks."""
    same_code = list(VALIDATION_COLUMNS)
    errors, isa_errors, ms, cycles = [], [], [], []
    print("\nx86 validation (znver4 simulated vs this host measured, one thread): ratio to artifact-avx2")
    for v in validation:
        for column in v["cycles"]:
            ms.append(v["ms"][column])
            cycles.append(v["cycles"][column])
            measured = v["ms"][column] / v["ms"]["artifact-avx2"]
            simulated = v["cycles"][column] / v["cycles"]["artifact-avx2"]
            if column != "artifact-avx2":
                (errors if column in same_code else isa_errors).append(simulated / measured - 1)
            print(f"  {v['subnet']:<10} {column:<16} measured {measured:6.2f}x  simulated {simulated:6.2f}x"
                  + ("" if column in same_code else "  (ISA differs: AVX-512 native, AVX2 emulated)"))
    result = {"rows": validation, "spearman_all": _spearman(ms, cycles),
              "ratio_error_same_code": errors, "ratio_error_isa_differs": isa_errors,
              "max_abs_ratio_error_same_code": max((abs(e) for e in errors), default=None)}
    print(f"  Spearman (all points) {result['spearman_all']:.3f}; same-code ratio errors "
          + " ".join(f"{e:+.0%}" for e in errors) + "; ISA-differs ratio errors "
          + " ".join(f"{e:+.0%}" for e in isa_errors))
    return result


if __name__ == "__main__":
    sys.exit(main())
