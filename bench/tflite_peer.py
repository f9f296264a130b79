"""The TFLite/LiteRT (XNNPACK) int8 peer of the ARM benchmark (a bench helper, not part of qfa_deploy).

What the peer is, exactly (``describe_tflite`` checks it on every converted model):

- **Model**: the *float* subnet, i.e. ``bench/deploy_latency._full_precision`` of the extracted subnet
  (every quantizer off; BN statistics recalibrated with quantizers off), exported to ONNX by
  ``deploy_latency._export_float`` (opset 17, NCHW, batch 1). Not the project's QDQ model: the QAT
  w4a4 scales are not carried over; TFLite chooses its own int8 scales.
- **Quantization**: TFLite post-training *full-integer* quantization with a representative dataset
  (the calibration array passed in, one image per step): ``onnx2tf`` 1.29.24 turns the ONNX into a
  TF SavedModel in NHWC, then ``tf.lite.TFLiteConverter`` (TensorFlow 2.19.0) with
  ``Optimize.DEFAULT``, ``supported_ops=[TFLITE_BUILTINS_INT8]``. Every CONV_2D (the 1x1 convs, the
  squeeze-excite FCs and the classifier, which are 1x1 convs in this network) and DEPTHWISE_CONV_2D
  computes int8 x int8 -> int32: weights int8 symmetric **per output channel**, activations int8
  asymmetric **per tensor**, biases int32. Hard-swish, hard-sigmoid (RELU_0_TO_1), add, mul, mean
  are int8 too; there is no float op between input and output.
- **I/O**: **float32** input and output (a QUANTIZE op first, a DEQUANTIZE op last), like the QDQ
  ONNX the onnxruntime peer runs. The input is **NHWC** ``[1, H, W, 3]`` (TFLite's layout);
  ``run_tflite``/``TfliteRunner`` take the NCHW array the other peers take and transpose it once,
  outside the timed ``invoke``.
- **Runtime**: ``ai_edge_litert`` 2.3.0 ``Interpreter`` with ``OpResolverType.AUTO``: the builtin
  kernels plus LiteRT's default XNNPACK delegate. XNNPACK takes the convs, depthwise convs, adds,
  muls, means and pads; it has no int8 HARD_SWISH or RELU_0_TO_1, so those run on TFLite's builtin
  int8 kernels between XNNPACK partitions (``xnnpack_coverage`` counts them; ``--check`` prints it).
  Measured on this x86 host (perf, LiteRT 2.3.0): XNNPACK's int8 depthwise kernels cover 3x3 and
  5x5 (``dwconv 9p``/``25p``) but a **7x7 depthwise conv falls back to a grouped igemm** (one output
  channel per group: 48-81% of the time), and the int8 HARD_SWISH runs TFLite's *reference*
  kernel (22% on a w1.2 @224 subnet). That is why this peer is 3-5x slower than onnxruntime int8
  here, and why ``--check`` also times the same model without XNNPACK (``tflite-int8-builtin``):
  a benchmark's "best peer" should take the faster of the two.

Converting: ``make_tflite_int8(model, calibration)`` (model: a float ``torch.nn.Module`` or the path
of a float ONNX). The converter (onnx2tf + TensorFlow, ~1.5 GB) is no dependency of the project:
it runs in a subprocess, with this interpreter if it can import both, else with the venv that
``bench/setup_tflite_converter.sh`` makes ($QFA_TFLITE_VENV, default ~/.cache/qfa-deploy/tflite-conv).
Results are cached by the sha256 of (float ONNX, calibration array, recipe) under
~/.cache/qfa-deploy/tflite-peer (or $QFA_CACHE/tflite-peer), with a JSON description beside each.

On the emulated Pi (``run_emulated``; ``emulated_command`` gives the argv): the aarch64
``ai-edge-litert`` wheel, unzipped into a scratch site, under ``qemu-aarch64`` with the emulated
Pi's python and numpy. qemu-user 7.2 shows the *host's* x86 /proc/cpuinfo to the guest; the
cpuinfo library in LiteRT then finds no ARM core and both XNNPACK and the optimized builtin
kernels crash (SIGSEGV; only the reference kernels run). ``emulated_command`` therefore runs qemu
with ``-L`` at ``PiImage.cpu_root(cpu)``, a root whose own ``proc/cpuinfo`` describes the emulated
core (Cortex-A72 or Cortex-A76) and links to the image's system folders.

    python bench/tflite_peer.py --check [--w12-subnets 1] [--emulated]

Modes used internally (stdlib + numpy at import, so this file also runs under the converter venv
and the emulated Pi's python): ``--convert ONNX CALIB.npy OUT.tflite`` and ``--run MODEL.tflite``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ONNX2TF_VERSION = "1.29.24"
LITERT_VERSION = "2.3.0"  # the x86 check and the aarch64 wheel run under qemu
# Bump when the conversion changes: it is part of the cache key.
RECIPE = f"onnx2tf=={ONNX2TF_VERSION}; ptq full-integer int8; float32 io; per-channel weights; v1"
# onnx2tf reads this file from its working directory as sample input for its own checks, and
# downloads it from GitHub when it is absent (no network here): the converter writes the first
# calibration images there instead.
_ONNX2TF_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"
_INT8_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")

def cache_root() -> Path:
    base = os.environ.get("QFA_CACHE") or Path.home() / ".cache" / "qfa-deploy"
    return Path(base)


def _deploy_latency():
    """bench/deploy_latency.py as a module (its float export, float subnets, onnxruntime peers)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import deploy_latency

    return deploy_latency


def converter_python() -> Path:
    """The python that can import onnx2tf and tensorflow: this one, else the converter venv's."""
    if importlib.util.find_spec("onnx2tf") and importlib.util.find_spec("tensorflow"):
        return Path(sys.executable)
    venv = Path(os.environ.get("QFA_TFLITE_VENV") or cache_root() / "tflite-conv")
    python = venv / "bin" / "python"
    if not python.exists():
        raise FileNotFoundError(f"no TFLite converter: {python} does not exist "
                                "(run: bash bench/setup_tflite_converter.sh)")
    return python


# ---------------------------------------------------------------------------------------------------
# Conversion


def make_tflite_int8(model, calibration: np.ndarray, out_path: str | Path | None = None) -> Path:
    """A full-integer int8 .tflite of the float ``model`` (see the module docstring), cached.

    Args:
        model: a float ``torch.nn.Module`` (exported with ``deploy_latency._export_float``) or the
            path of a float ONNX model with one NCHW float input.
        calibration: float32 ``[N, 3, H, W]``, normalised as the model's input: the representative
            dataset (N steps of one image).
        out_path: also copy the model there.

    Returns the path of the .tflite (``out_path`` if given, else the cached file).
    """
    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    if calibration.ndim != 4 or calibration.shape[1] != 3 or len(calibration) == 0:
        raise ValueError(f"calibration must be float [N, 3, H, W], got shape {calibration.shape}")
    with tempfile.TemporaryDirectory(prefix="qfa-tflite-") as tmp:
        tmp = Path(tmp)
        if isinstance(model, (str, Path)):
            onnx_path = Path(model)
        else:
            onnx_path = tmp / "float.onnx"
            _deploy_latency()._export_float(model, calibration.shape[-1], onnx_path)
        key = hashlib.sha256()
        key.update(onnx_path.read_bytes())
        key.update(repr(calibration.shape).encode())
        key.update(calibration.tobytes())
        key.update(RECIPE.encode())
        cached = cache_root() / "tflite-peer" / f"{key.hexdigest()[:32]}.tflite"
        if not cached.exists():
            _convert_in_subprocess(onnx_path, calibration, cached, tmp)
    if out_path is None:
        return cached
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, out_path)
    shutil.copyfile(cached.with_suffix(".json"), out_path.with_suffix(".json"))
    return out_path


def _convert_in_subprocess(onnx_path: Path, calibration: np.ndarray, cached: Path, tmp: Path) -> None:
    np.save(tmp / "calibration.npy", calibration)
    work = tmp / "convert"
    work.mkdir()
    partial = tmp / "model.tflite"
    args = [str(converter_python()), str(Path(__file__).resolve()), "--convert", str(onnx_path.resolve()),
            str(tmp / "calibration.npy"), str(partial)]
    start = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(args, cwd=work, capture_output=True, text=True, timeout=3600, env=env)
    if done.returncode != 0 or not partial.exists():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"TFLite conversion failed (exit {done.returncode}):\n{tail}")
    info = json.loads(done.stdout.strip().splitlines()[-1])
    info.update(convert_s=round(time.perf_counter() - start, 1), recipe=RECIPE,
                calibration_images=len(calibration))
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.with_suffix(".json").write_text(json.dumps(info, indent=2))
    shutil.move(partial, cached)  # last: a cached .tflite always has its description


def _convert(onnx_path: Path, calibration_npy: Path, out: Path) -> dict:
    """Runs in the converter's python, in a scratch working directory (see ``_ONNX2TF_SAMPLE``)."""
    import onnx2tf
    import tensorflow as tf

    nhwc = np.load(calibration_npy).transpose(0, 2, 3, 1).copy()
    np.save(_ONNX2TF_SAMPLE, nhwc[:20])
    saved = Path("saved_model")
    onnx2tf.convert(input_onnx_file_path=str(onnx_path), output_folder_path=str(saved),
                    output_signaturedefs=True, non_verbose=True)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([nhwc[i:i + 1]] for i in range(len(nhwc)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.float32
    converter.inference_output_type = tf.float32
    out.write_bytes(converter.convert())
    # described here, with the converter's own ai_edge_litert: the caller's python needs no LiteRT
    return {"converter": {"onnx2tf": onnx2tf.__version__, "tensorflow": tf.__version__},
            "model": describe_tflite(out)}


# ---------------------------------------------------------------------------------------------------
# Running


def _interpreter(path: str | Path, threads: int, xnnpack: bool = True):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = Interpreter(model_path=str(path), num_threads=threads, experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    return interpreter


class TfliteRunner:
    """One LiteRT interpreter (XNNPACK unless ``xnnpack=False``); ``set_input`` then ``invoke``."""

    def __init__(self, path: str | Path, threads: int = 1, xnnpack: bool = True):
        self.interpreter = _interpreter(path, threads, xnnpack)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.coverage = xnnpack_coverage(self.interpreter)
        if xnnpack and self.coverage["xnnpack_partitions"] == 0:
            raise RuntimeError(f"{path}: XNNPACK delegated nothing")

    def set_input(self, x_nchw: np.ndarray) -> None:
        """One image, NCHW float32 (``[1, 3, H, W]``), as the other peers take it."""
        x = np.ascontiguousarray(np.asarray(x_nchw, dtype=np.float32).transpose(0, 2, 3, 1))
        self.interpreter.set_tensor(self.input["index"], x)

    def invoke(self) -> None:
        self.interpreter.invoke()

    def output_array(self) -> np.ndarray:
        return self.interpreter.get_tensor(self.output["index"]).copy()

    def median_ms(self, warmup: int = 3, repeat: int = 20) -> float:
        for _ in range(warmup):
            self.invoke()
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            self.invoke()
            times.append(time.perf_counter() - start)
        return 1e3 * statistics.median(times)


def run_tflite(path: str | Path, x: np.ndarray, threads: int = 1, xnnpack: bool = True) -> np.ndarray:
    """Logits ``[N, classes]`` of the .tflite on ``x`` (NCHW float32, any N: one image per invoke)."""
    runner = TfliteRunner(path, threads, xnnpack)
    outs = []
    for i in range(len(x)):
        runner.set_input(x[i:i + 1])
        runner.invoke()
        outs.append(runner.output_array().reshape(1, -1))
    return np.concatenate(outs)


def xnnpack_coverage(interpreter) -> dict:
    """Which ops XNNPACK took: every original op reached backwards from a DELEGATE node's outputs
    without crossing that node's inputs is inside it; the rest run on LiteRT's builtin kernels."""
    ops = interpreter._get_ops_details()  # the public API has no execution plan
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    original = [op for op in ops if op["op_name"] != "DELEGATE"]
    producer = {t: op["index"] for op in original for t in op["outputs"]}
    inside: set[int] = set()
    for node in delegates:
        boundary = set(node["inputs"])
        stack = [t for t in node["outputs"] if t >= 0]
        while stack:
            tensor = stack.pop()
            if tensor in boundary or tensor not in producer or producer[tensor] in inside:
                continue
            inside.add(producer[tensor])
            stack.extend(t for t in ops[producer[tensor]]["inputs"] if t >= 0)
    outside = Counter(op["op_name"] for op in original if op["index"] not in inside)
    return {"ops": len(original), "xnnpack_ops": len(inside), "xnnpack_partitions": len(delegates),
            "builtin_ops": dict(sorted(outside.items()))}


def describe_tflite(path: str | Path) -> dict:
    """What the .tflite computes: op counts, I/O dtype and layout, weight dtypes and granularity."""
    interpreter = _interpreter(path, 1, xnnpack=False)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    weights = Counter()
    float_compute = []
    for op in ops:
        if op["op_name"] in _INT8_OPS:
            x, w = tensors[op["inputs"][0]], tensors[op["inputs"][1]]
            scales = len(w["quantization_parameters"]["scales"])
            channel_axis = w["quantization_parameters"]["quantized_dimension"]
            per_channel = scales > 1 and scales == w["shape"][channel_axis]
            weights[f"{op['op_name']} {x['dtype'].__name__}x{w['dtype'].__name__} "
                    f"{'per-channel' if per_channel else 'per-tensor'}"] += 1
        if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE") and any(
                tensors[t]["dtype"] == np.float32 for t in op["outputs"] if t >= 0):
            float_compute.append(op["op_name"])
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    return {"input": {"dtype": inp["dtype"].__name__, "shape": inp["shape"].tolist(), "layout": "NHWC"},
            "output": {"dtype": out["dtype"].__name__, "shape": out["shape"].tolist()},
            "ops": dict(sorted(Counter(op["op_name"] for op in ops).items())),
            "weights": dict(sorted(weights.items())), "float_ops": float_compute}


# ---------------------------------------------------------------------------------------------------
# The emulated Pi (qemu-user)


def litert_aarch64_site(dest: Path | None = None, wheels: Path | None = None) -> Path:
    """The aarch64 cp311 ``ai-edge-litert`` wheel unzipped into a site folder (made once).

    The wheel is taken from ``wheels`` (default: the site's ``wheels/``) or fetched there with
    ``pip download``. numpy comes from the emulated Pi's own site.
    """
    dest = Path(dest or cache_root() / "tflite-peer" / f"litert-{LITERT_VERSION}-aarch64-site")
    if (dest / ".complete").exists():
        return dest
    wheels = Path(wheels or dest.with_name(dest.name + "-wheels"))
    pattern = f"ai_edge_litert-{LITERT_VERSION}-cp311-cp311-manylinux_*_aarch64.whl"
    found = sorted(wheels.glob(pattern))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.11", "--implementation", "cp", "--platform", "manylinux_2_27_aarch64",
                        "-d", str(wheels), f"ai-edge-litert=={LITERT_VERSION}"], check=True)
        found = sorted(wheels.glob(pattern))
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with zipfile.ZipFile(found[-1]) as wheel:
        wheel.extractall(partial)
    for so in partial.rglob("*.so*"):  # zipfile drops the executable bits
        so.chmod(0o755)
    (partial / ".complete").write_text(found[-1].name + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    return dest


@contextlib.contextmanager
def emulated_command(path: str | Path, x: np.ndarray | None = None, *, cpu: str = "cortex-a72", threads: int = 1,
                     repeat: int = 3, xnnpack: bool = True, image=None, site: Path | None = None):
    """(argv, env) running the .tflite under ``qemu-aarch64 -cpu cpu`` with the emulated Pi's python
    (this file's ``--run`` mode), valid inside the ``with``. ``argv[0]`` is ``qemu-aarch64``: a caller
    may insert its own qemu options (e.g. ``-plugin``) after it. The run prints one JSON line: wall
    ms of each invoke (emulation, not latency), the XNNPACK coverage, the logits of ``x`` (one NCHW
    image; zeros if None)."""
    if image is None:
        from qfa_deploy.deploy.emulated_pi import find_emulated_pi

        image = find_emulated_pi()
        if image is None:
            raise FileNotFoundError("no emulated Pi: build it with qfa_deploy.deploy.emulated_pi.build_emulated_pi()")
    site = site or litert_aarch64_site()
    with tempfile.TemporaryDirectory(prefix="qfa-tflite-emu-") as tmp:
        tmp = Path(tmp)
        root = image.cpu_root(cpu)
        shutil.copyfile(Path(__file__).resolve(), tmp / "tflite_peer.py")
        shutil.copyfile(path, tmp / "model.tflite")
        args = [str(tmp / "tflite_peer.py"), "--run", str(tmp / "model.tflite"), "--threads", str(threads),
                "--repeat", str(repeat)]
        if x is not None:
            np.save(tmp / "input.npy", np.asarray(x, dtype=np.float32))
            args += ["--input", str(tmp / "input.npy")]
        if not xnnpack:
            args.append("--no-xnnpack")
        argv = ["qemu-aarch64", "-cpu", cpu, "-L", str(root), str(root / image.python.relative_to(image.rootfs)),
                *args]
        env = image.environment()
        env["PYTHONPATH"] = os.pathsep.join([str(site), str(image.site)])
        yield argv, env


def run_emulated(path: str | Path, x: np.ndarray | None = None, *, timeout: float = 1800, **options) -> dict:
    """``emulated_command(path, x, **options)`` run; its JSON plus ``cpu`` and the whole process's seconds."""
    with emulated_command(path, x, **options) as (argv, env):
        start = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-10:])
        raise RuntimeError(f"emulated LiteRT run failed (exit {done.returncode}):\n{tail}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(cpu=options.get("cpu", "cortex-a72"), process_s=round(time.perf_counter() - start, 1))
    return result


def _run_main(args) -> int:
    """``--run``: stdlib + numpy + ai_edge_litert only (it runs under qemu too)."""
    runner = TfliteRunner(args.run, args.threads, xnnpack=not args.no_xnnpack)
    x = np.load(args.input) if args.input else np.zeros((1, 3, *runner.input["shape"][1:3]), np.float32)
    runner.set_input(x)
    ms = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        runner.invoke()
        ms.append(1e3 * (time.perf_counter() - start))
    print(json.dumps({"ms": ms, "coverage": runner.coverage, "logits": runner.output_array().ravel().tolist()}))
    return 0


# ---------------------------------------------------------------------------------------------------
# The check


def cifar10_float_subnet(arch: Path = HERE.parent / "export" / "cifar10-largest-w4a4.json", calib_images: int = 2000):
    """(float subnet, its ArchConfig, the calibration images [N, 3, 32, 32]) of the CIFAR-10 preset:
    the embedded supernet, ``arch`` extracted, quantizers off, BN recalibrated on the validation
    images that export calibrates on (``data.calibration_images``), 100 per batch."""
    import torch

    from qfa_deploy.arch import load_arch
    from qfa_deploy.calibrate import calibrate
    from qfa_deploy.checkpoint import load_supernet
    from qfa_deploy.data import calibration_images
    from qfa_deploy.extract import extract
    from qfa_deploy.reference import default_checkpoint

    supernet = load_supernet(default_checkpoint())
    cfg = load_arch(arch, expect_space=supernet.space.name)
    source = calibration_images(supernet.space, images=calib_images)
    supernet.set_active(cfg)
    net = _deploy_latency()._full_precision(extract(supernet, cfg))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        calibrate(net, (x for x, _ in source.batches(100)), cfg.resolution, calib_images // 100)
    images = np.concatenate([x.numpy() for x, _ in source.subset(calib_images).batches(100)])
    return net, cfg, images


def w12_float_subnet(seed: int, resolution: int = 224):
    """A random float subnet of qfa-mbv3-w1.2 as ``deploy_latency`` builds it (random weights, BN
    statistics from two random batches of 4) and those 8 images as the calibration array."""
    import random

    import torch

    from qfa_deploy.arch import sample_arch
    from qfa_deploy.calibrate import calibrate
    from qfa_deploy.extract import extract
    from qfa_deploy.nn.supernet import QFASupernet

    bench = _deploy_latency()
    torch.manual_seed(seed)
    cfg = sample_arch(bench.SPACE, random.Random(seed), resolutions=[resolution])
    net = bench._full_precision(extract(QFASupernet(bench.SPACE).eval(), cfg))
    g = torch.Generator().manual_seed(seed)
    batches = [torch.randn(4, 3, resolution, resolution, generator=g) for _ in range(2)]
    calibrate(net, iter(batches), resolution, 2)
    return net, cfg, torch.cat(batches).numpy()


def _timings(tflite: Path, net, resolution: int, x: np.ndarray, repeat: int, rounds: int = 3) -> dict:
    """One thread, all in this process: each runtime's median ms of ``repeat`` runs after 3 warm-ups,
    measured in ``rounds`` interleaved rounds; the median of the rounds (and each round's figure).
    onnxruntime's models are ``deploy_latency``'s: the float export and ``_ort_int8`` of it (QDQ,
    per-channel int8 weights, uint8 activations, calibrated on random normal images)."""
    bench = _deploy_latency()
    with tempfile.TemporaryDirectory(prefix="qfa-tflite-ort-") as tmp:
        tmp = Path(tmp)
        bench._export_float(net, resolution, tmp / "fp32.onnx")
        bench._ort_int8(tmp / "fp32.onnx", tmp / "int8.onnx", resolution)
        runs = {}
        for name, xnnpack in (("tflite-int8-xnnpack", True), ("tflite-int8-builtin", False)):
            runner = TfliteRunner(tflite, 1, xnnpack=xnnpack)
            runner.set_input(x)
            runs[name] = runner.invoke
        for name, model in (("ort-int8", "int8.onnx"), ("ort-fp32", "fp32.onnx")):
            session = bench._ort_session(tmp / model, 1)
            runs[name] = lambda s=session: s.run(None, {"input": x})
        rounds_ms = {name: [] for name in runs}
        for _ in range(rounds):
            for name, fn in runs.items():
                rounds_ms[name].append(round(bench._median_ms(fn, 3, repeat), 3))
    out = {name: statistics.median(values) for name, values in rounds_ms.items()}
    return {"median_ms": out, "rounds_ms": rounds_ms, "load_average": [round(v, 2) for v in os.getloadavg()]}


def check(w12_subnets: int, emulated: bool, test_images: int, repeat: int) -> dict:
    import torch

    from qfa_deploy.data import load_splits
    from qfa_deploy.space import create_space

    report: dict = {}
    start = time.perf_counter()
    net, cfg, calib = cifar10_float_subnet()
    tflite = make_tflite_int8(net, calib[:200])
    convert_info = json.loads(tflite.with_suffix(".json").read_text())
    test = load_splits(create_space(cfg.space)).test  # sorted by class: a fixed random sample of it
    test = test.select(torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:test_images])
    x, y = (t.numpy() for t in next(iter(test.batches(test_images))))
    with torch.no_grad():
        float_top1 = net(torch.from_numpy(x)).reshape(len(x), -1).argmax(1).numpy()
    tfl_logits = run_tflite(tflite, x, threads=1)
    tfl_top1 = tfl_logits.argmax(1)
    report["cifar10"] = {
        "arch": cfg.short(),
        "tflite": str(tflite), "model": convert_info,
        "test_images": len(x), "top1_agreement": float((tfl_top1 == float_top1).mean()),
        "accuracy_float": float((float_top1 == y).mean()), "accuracy_tflite_int8": float((tfl_top1 == y).mean()),
        "x86_ms_1_thread": _timings(tflite, net, cfg.resolution, x[:1], repeat),
        "xnnpack": TfliteRunner(tflite, 1).coverage,
    }
    if emulated:
        report["cifar10"]["emulated"] = {}
        from qfa_deploy.deploy.emulated_pi import CPUINFO

        for cpu in CPUINFO:
            for name, xnnpack in (("xnnpack", True), ("builtin", False)):
                result = run_emulated(tflite, x[:1], cpu=cpu, repeat=3, xnnpack=xnnpack)
                logits = np.asarray(result.pop("logits"))
                result["same_top1_as_x86"] = bool(logits.argmax() == tfl_logits[0].argmax())
                result["max_abs_logit_diff_vs_x86_xnnpack"] = float(np.abs(logits - tfl_logits[0]).max())
                report["cifar10"]["emulated"][f"{cpu} {name}"] = result
    report["w12"] = []
    for seed in range(w12_subnets):
        net, cfg, calib = w12_float_subnet(seed)
        tflite = make_tflite_int8(net, calib)
        x = np.random.default_rng(seed).standard_normal((1, 3, 224, 224)).astype(np.float32)
        report["w12"].append({"seed": seed, "arch": cfg.short(), "tflite": str(tflite),
                              "x86_ms_1_thread": _timings(tflite, net, 224, x, repeat),
                              "xnnpack": TfliteRunner(tflite, 1).coverage})
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Convert the CIFAR-10 preset's float subnet, "
                        "print top-1 agreement with the float model and x86 timings beside onnxruntime.")
    parser.add_argument("--w12-subnets", type=int, default=1, help="With --check: also time this many "
                        "random qfa-mbv3-w1.2 @224 subnets.")
    parser.add_argument("--emulated", action="store_true", help="With --check: also run the CIFAR-10 model "
                        "under qemu-aarch64 (Cortex-A72 and A76) with the aarch64 LiteRT wheel.")
    parser.add_argument("--test-images", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--convert", nargs=3, type=Path, metavar=("ONNX", "CALIB_NPY", "OUT_TFLITE"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--no-xnnpack", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.convert:
        print(json.dumps(_convert(*args.convert)))
        return 0
    if args.run:
        return _run_main(args)
    if not args.check:
        parser.error("nothing to do: pass --check")
    report = check(args.w12_subnets, args.emulated, args.test_images, args.repeat)
    _summary(report)
    print(json.dumps(report, indent=2))
    return 0


def _summary(report: dict) -> None:
    """The figures of ``check`` in a few lines, on stderr (stdout is the JSON)."""
    c = report["cifar10"]
    lines = [f"CIFAR-10 preset (float subnet -> TFLite int8): top-1 agreement {c['top1_agreement']:.2%} on "
             f"{c['test_images']} test images (accuracy float {c['accuracy_float']:.2%}, "
             f"int8 {c['accuracy_tflite_int8']:.2%}); XNNPACK: {c['xnnpack']['xnnpack_ops']}/{c['xnnpack']['ops']} "
             f"ops in {c['xnnpack']['xnnpack_partitions']} partitions, builtin {c['xnnpack']['builtin_ops']}"]
    rows = [("cifar10", c["x86_ms_1_thread"])]
    rows += [(f"w1.2 seed {w['seed']}", w["x86_ms_1_thread"]) for w in report["w12"]]
    for name, timing in rows:
        figures = ", ".join(f"{k} {v:.2f}" for k, v in timing["median_ms"].items())
        lines.append(f"x86, 1 thread, ms (median of rounds): {name}: {figures} (load {timing['load_average'][0]})")
    for name, result in c.get("emulated", {}).items():
        lines.append(f"emulated {name}: wall ms per invoke {[round(v) for v in result['ms']]} (qemu, not latency), "
                     f"top-1 as x86: {result['same_top1_as_x86']}")
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
