"""Latency of the compiled artifact against its peers, all measured in the same run (not a test).

For N random subnets of qfa-mbv3-w1.2 at 224x224, batch 1, T threads, on this CPU:

- artifact:S    the project's QDQ ONNX compiled by ``compile_artifact`` for the x86 profile with each
                ``--schedule`` S: ``auto`` (the default: ``tiled-vnni`` on AVX512-VNNI CPUs, else
                ``tiled-cpu``), ``tiled-cpu`` (register-tiled convs), ``tiled-vnni`` (1x1 convs as
                uint8 x int8 VNNI dot products), ``generic``; with ``--database`` the
                MetaSchedule schedules of ``qfa-deploy tune``
- tvm-untuned   the same QDQ ONNX, ``schedule="none"``: plain ``tvm.compile`` (TVM 0.27 has no
                default CPU schedules: naive loops, one thread)
- torch-fp32    the same subnet in full precision, PyTorch eager
- ort-fp32      that float subnet exported to ONNX, onnxruntime (default optimisations)
- ort-int8      that ONNX quantized by onnxruntime's quantize_static (QDQ, uint8/int8), onnxruntime
- ov-int8       OpenVINO (CPU plugin) on the artifact's own QDQ ONNX as it is: all its convs run in
                u8 x i8 but the squeeze-excite ones; those, pooling and the unfused quantizes at inference
                precision f32
- ov-int8-bf16  the same with inference precision bf16, OpenVINO's default on CPUs with bf16 (this
                AVX512 host)
- ov-fp32       OpenVINO on the float ONNX of ort-fp32, inference precision f32
- ov-bf16       the same float ONNX at inference precision bf16 (OpenVINO's default here)
                Every OpenVINO peer: latency performance hint, ``--threads`` inference threads. The
                bf16 peers are left out where OpenVINO reports no bf16, all four without ``openvino``.

Prints per-subnet medians (ms) and the artifact's ratio to the best peer (every peer but TVM untuned),
then geometric means; the JSON also has the geomean ratio to each peer.
Each runtime is timed in a fresh process of its own (``_isolated``), one after another, in
``--rounds`` interleaved rounds (default 3) whose median is reported.
The supernet is randomly initialised; BN/BatchQuant statistics come from random calibration
batches (for the float peers too: without them a random float net sinks into denormals and runs
up to 4x slower, which no trained net does). Without the project's exporter installed the
QDQ model is onnxruntime's quantize_static output instead (said in the output).

    python bench/deploy_latency.py --subnets 10 --threads 2 [--schedule tiled-cpu tiled-vnni]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import dataclasses
import json
import logging
import math
import multiprocessing
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from qfa_deploy.deploy.compile import DEFAULT_SCHEDULE, SCHEDULES

try:
    # Imported here, when every spawned worker starts (it imports this module), not first inside the
    # worker's call: imported there, every OpenVINO kernel ran ~2x slower (a QDQ subnet 15 ms instead
    # of 7 on one thread, measured 2026-12-04 with the same model in the same kind of worker; cause
    # not found), while a plain script, or this import, gets 7 ms.
    import openvino  # noqa: F401
except ImportError:
    pass

SPACE = "qfa-mbv3-w1.2"


def geomean(values) -> float:
    values = list(values)
    return math.exp(statistics.mean(math.log(v) for v in values))


def _median_ms(fn, warmup: int, repeat: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _ort_session(path: Path, threads: int, optimize: bool = True):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # quantize_static leaves unused initializers: one warning each
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _export_float(net, resolution: int, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.randn(1, 3, resolution, resolution), str(path), input_names=["input"],
                          output_names=["logits"], opset_version=17, dynamo=False)


def _ort_int8(fp32: Path, out: Path, resolution: int) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(0)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": rng.standard_normal((1, 3, resolution, resolution)).astype(np.float32)}
                            for _ in range(4)])

        def get_next(self):
            return next(self.it, None)

    logging.getLogger().setLevel(logging.ERROR)  # its "consider pre-processing" advice, per model
    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)


def _qdq_model(subnet, path: Path) -> str:
    """The project's QDQ export of ``subnet``; returns which exporter made it."""
    try:
        from qfa_deploy.export.onnx_export import export_onnx, save_onnx
        from qfa_deploy.fold import fold
    except ImportError:
        return ""
    save_onnx(export_onnx(fold(subnet), batch=1), path)
    return "qfa_deploy.export"


def _tvm_ms(folder: Path, device, warmup: int, repeat: int, resolution: int) -> float:
    from qfa_deploy.deploy.device import MeasureProtocol
    from qfa_deploy.deploy.parity import random_inputs
    from qfa_deploy.deploy.runner import open_session

    protocol = MeasureProtocol(warmup=warmup, number=1, repeat=repeat, min_repeat_ms=0)
    with open_session(device) as session:
        vm = session.load(folder / "model.so")
        x = random_inputs([{"name": "input", "shape": [1, 3, resolution, resolution], "dtype": "float32"}])
        return 1e3 * statistics.median(session.time(vm, x, protocol).seconds)


def _ort_ms(path: Path, threads: int, warmup: int, repeat: int, resolution: int) -> float:
    session = _ort_session(path, threads)
    x = np.random.default_rng(0).standard_normal((1, 3, resolution, resolution)).astype(np.float32)
    return _median_ms(lambda: session.run(None, {"input": x}), warmup, repeat)


def _ov_model(path: Path, threads: int, precision: str):
    """``path`` compiled by OpenVINO for the CPU at batch 1, latency hint, ``threads`` inference
    threads, float ops at ``precision`` ("f32" or "bf16")."""
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    config = {hints.performance_mode: hints.PerformanceMode.LATENCY, props.inference_num_threads: threads,
              hints.inference_precision: getattr(ov.Type, precision)}
    return ov.Core().compile_model(str(path), "CPU", config)


def _ov_ms(path: Path, threads: int, precision: str, warmup: int, repeat: int, resolution: int) -> float:
    request = _ov_model(path, threads, precision).create_infer_request()
    x = np.random.default_rng(0).standard_normal((1, 3, resolution, resolution)).astype(np.float32)
    return _median_ms(lambda: request.infer({0: x}), warmup, repeat)


def _ov_precisions() -> tuple[str, ...]:
    """The inference precisions OpenVINO's CPU plugin offers here: ("f32", "bf16") or ("f32",);
    () without openvino."""
    try:
        import openvino as ov
        import openvino.properties.device as device
    except ImportError:
        return ()
    return ("f32", "bf16") if "BF16" in ov.Core().get_property("CPU", device.capabilities) else ("f32",)


# OpenVINO peer -> (which ONNX model, inference precision)
OV_PEERS = {"ov-int8": ("qdq", "f32"), "ov-int8-bf16": ("qdq", "bf16"),
            "ov-fp32": ("fp32", "f32"), "ov-bf16": ("fp32", "bf16")}


def _torch_ms(state: Path, cfg: dict, threads: int, warmup: int, repeat: int, resolution: int) -> float:
    from qfa_deploy.arch import ArchConfig
    from qfa_deploy.extract import extract
    from qfa_deploy.nn.supernet import QFASupernet

    torch.set_num_threads(threads)
    net = _full_precision(extract(QFASupernet(SPACE), ArchConfig.from_dict(cfg)))
    net.load_state_dict(torch.load(state, weights_only=True))
    x = torch.randn(1, 3, resolution, resolution)
    with torch.no_grad():
        return _median_ms(lambda: net(x), warmup, repeat)


def _full_precision(subnet):
    """An eval-mode float copy of ``subnet``: every quantizer off (``bits=None``), so each conv is a plain
    conv + BN + activation. ``extract`` always returns the quantized subnet; exported as it is, the
    quantizers' Div/Round/Clip/Mul would make the "fp32" peers about 2x slower than a float network."""
    from qfa_deploy.nn.layers import QuantConv

    net = copy.deepcopy(subnet).eval()
    for module in net.modules():
        if isinstance(module, QuantConv):
            module.weight_quant.bits = module.act_quant.bits = None
    return net


def _isolated(fn, *args):
    """``fn(*args)`` in a fresh process. Runtimes measured one after another in one process share
    it with the others' thread pools (TVM's pinned workers, torch's OpenMP team, onnxruntime's
    spinning pool), which at 2 threads on 2 cores slowed whichever ran next by up to 2x."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


def _in_rounds(runs: dict, rounds: int) -> dict[str, list[float]]:
    """Each runtime's median ms, measured ``rounds`` times: every round measures them all once, one
    after another, starting one further along each time. This host's speed drifts over minutes
    (one runtime measured 2x slower at 2 threads than at 1 while the others were not), so one
    measurement each would charge the drift to whichever ran then; the median over rounds does not."""
    names = list(runs)
    out: dict[str, list[float]] = {name: [] for name in names}
    for k in range(rounds):
        for name in names[k % len(names):] + names[: k % len(names)]:
            out[name].append(_isolated(*runs[name]))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subnets", type=int, default=10)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3,
                        help="Measure every runtime this many times, interleaved; report the median.")
    parser.add_argument("--database", type=Path, default=None, help="MetaSchedule database for the artifact.")
    parser.add_argument("--schedule", nargs="+", default=[DEFAULT_SCHEDULE], choices=SCHEDULES,
                        help="The artifact's CPU schedule(s), one artifact column each (default: the export default).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    from qfa_deploy.arch import sample_arch
    from qfa_deploy.calibrate import calibrate
    from qfa_deploy.deploy import compile_artifact, load_device
    from qfa_deploy.extract import extract
    from qfa_deploy.nn.supernet import QFASupernet

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    device = load_device("x86")
    device = dataclasses.replace(device, threads=args.threads)
    supernet = QFASupernet(SPACE).eval()
    rng = random.Random(args.seed)
    artifacts = [f"artifact:{s}" for s in args.schedule]
    precisions = _isolated(_ov_precisions)  # OpenVINO's CPU plugin not started in this process
    ov_peers = {name: how for name, how in OV_PEERS.items() if how[1] in precisions}
    if not precisions:
        print("openvino is not installed: its peers are left out (pip install openvino)")
    best_of = ("torch-fp32", "ort-fp32", "ort-int8", *ov_peers)  # what a user would otherwise deploy
    peers = ("tvm-untuned", *best_of)
    columns = (*artifacts, *peers)
    rows = []
    print(f"{SPACE} @{args.resolution}, batch 1, {args.threads} threads, median of {args.repeat} runs, "
          f"median of {args.rounds} rounds (ms); tuning database: {args.database or 'none'}")
    print(f"{'subnet':<8} " + " ".join(f"{c:>20}" for c in columns) + "   artifact/best peer")
    for i in range(args.subnets):
        cfg = sample_arch(SPACE, rng, resolutions=[args.resolution])
        with tempfile.TemporaryDirectory(prefix="qfa-bench-") as tmp:
            tmp = Path(tmp)
            subnet = extract(supernet, cfg)
            fp_net = _full_precision(subnet)
            # both calibrated (BN statistics) on the same batches: an uncalibrated random net's activations
            # shrink layer by layer into float denormals, which slowed the float peers up to 4x
            for net in (subnet, fp_net):
                g = torch.Generator().manual_seed(i)
                batches = (torch.randn(4, 3, args.resolution, args.resolution, generator=g) for _ in range(2))
                calibrate(net, batches, cfg.resolution, 2)
            _export_float(fp_net, args.resolution, tmp / "fp32.onnx")
            _ort_int8(tmp / "fp32.onnx", tmp / "ort-int8.onnx", args.resolution)
            qdq = tmp / "qdq.onnx"
            exporter = _qdq_model(subnet.eval(), qdq) or "onnxruntime quantize_static (fallback)"
            if not qdq.exists():
                qdq = tmp / "ort-int8.onnx"
            compile_s, metas = {}, {}
            for schedule, column in zip(args.schedule, artifacts, strict=True):
                start = time.perf_counter()
                metas[column] = compile_artifact(qdq, device, tmp / column, database=args.database, schedule=schedule)
                compile_s[column] = time.perf_counter() - start
            compile_artifact(qdq, device, tmp / "untuned", schedule="none")
            torch.save(fp_net.state_dict(), tmp / "fp32.pt")
            w, r, res, t = args.warmup, args.repeat, args.resolution, args.threads
            runs = {column: (_tvm_ms, tmp / column, device, w, r, res) for column in artifacts} | {
                "tvm-untuned": (_tvm_ms, tmp / "untuned", device, w, r, res),
                "torch-fp32": (_torch_ms, tmp / "fp32.pt", cfg.to_dict(), t, w, r, res),
                "ort-fp32": (_ort_ms, tmp / "fp32.onnx", t, w, r, res),
                "ort-int8": (_ort_ms, tmp / "ort-int8.onnx", t, w, r, res),
            } | {name: (_ov_ms, qdq if model == "qdq" else tmp / "fp32.onnx", t, precision, w, r, res)
                 for name, (model, precision) in ov_peers.items()}
            rounds_ms = _in_rounds(runs, args.rounds)
        ms = {column: statistics.median(values) for column, values in rounds_ms.items()}
        best = min(ms[p] for p in best_of)
        ratios = {column: ms[column] / best for column in artifacts}
        rows.append({"arch": cfg.to_dict(), "ms": ms, "rounds_ms": rounds_ms, "ratio_to_best_peer": ratios,
                     "compile_s": compile_s,
                     "exporter": exporter, "tuning_database": metas[artifacts[0]]["tuning_database"],
                     "schedules": {c: m["schedule"] for c, m in metas.items()}})
        print(f"{i:<8} " + " ".join(f"{ms[c]:20.2f}" for c in columns) + "   "
              + " ".join(f"{v:.2f}x" for v in ratios.values()), flush=True)
    geo = {k: geomean(r["ms"][k] for r in rows) for k in columns}
    best = min(geo[p] for p in best_of)
    print("geomean  " + " ".join(f"{geo[c]:20.2f}" for c in columns) + "   "
          + " ".join(f"{geo[c] / best:.2f}x" for c in artifacts))
    for column in artifacts:
        mean_s = statistics.mean(r["compile_s"][column] for r in rows)
        print(f"{column}: compile {mean_s:.1f} s on average")
    best_peer = min(best_of, key=geo.__getitem__)
    print(f"best peer: {best_peer}; artifact / each peer (geomeans): "
          + "; ".join(f"{c}: " + " ".join(f"{p} {geo[c] / geo[p]:.2f}x" for p in best_of) for c in artifacts))
    print(f"QDQ model from: {rows[0]['exporter']}")
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "resolution": args.resolution, "rows": rows,
                                         "geomean_ms": geo, "best_peer": best_peer, "geomean_ratio_to_best_peer":
                                         {c: geo[c] / best for c in artifacts}, "geomean_ratio_to_peer":
                                         {c: {p: geo[c] / geo[p] for p in peers} for c in artifacts}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
