"""Parity of an exported subnet across runtimes: PyTorch eval, the folded form, onnxruntime, TVM x86.

The reference is the calibrated PyTorch eval subnet (DESIGN.md, "Numerics contract"). Every
runtime sees the same float images (resized once in PyTorch) and is compared with it on top-1
agreement and the largest absolute logit difference:

- ``pytorch``: the eval-mode ``StaticSubnet``;
- ``folded``: ``qfa_deploy.fold.folded_forward`` (the folded constants, run in PyTorch);
- ``ort_noopt``: onnxruntime with graph optimisations off (``ORT_DISABLE_ALL``), the exact QDQ
  reference;
- ``ort_default``: onnxruntime with its default optimisations (its own integer kernels);
- ``tvm_x86``: ``tvm.relax.frontend.onnx.from_onnx`` + ``tvm.compile`` for ``{"kind": "llvm"}``,
  run by ``tvm.relax.VirtualMachine`` at a fixed batch size;
- ``tvm_artifact``: the library an artifact was compiled to (``export --target x86``), loaded
  and run here (only for x86 libraries on an x86 host).
"""

from __future__ import annotations

import logging
import platform
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from qfa_deploy.arch import ArchConfig
from qfa_deploy.data import ImageSource, resize
from qfa_deploy.errors import QfaError
from qfa_deploy.fold import block_names, fold, folded_forward, quantize_codes

__all__ = [
    "RUNTIMES",
    "checkpoint_agreement",
    "compare_runtimes",
    "named_quant_convs",
    "ort_runner",
    "pytorch_codes",
    "quantizer_parity",
    "tvm_x86_runner",
    "VerifyConfig",
    "verify_artifact",
]

log = logging.getLogger(__name__)

RUNTIMES = ("pytorch", "folded", "ort_noopt", "ort_default", "tvm_x86", "tvm_artifact")
Runner = Callable[[np.ndarray], list[np.ndarray]]  # float32 NCHW -> graph outputs


def named_quant_convs(subnet) -> list[tuple[str, torch.nn.Module]]:
    """The quantized convs of a ``StaticSubnet`` with the names the folded form gives them."""
    names = block_names(subnet.arch)
    out = [("stem", subnet.stem)]
    for prefix, block in [("first_block", subnet.first_block), *zip(names, subnet.blocks, strict=True)]:
        for kind in ("expand", "depthwise", "project"):
            conv = getattr(block, kind)
            if conv is not None:
                out.append((f"{prefix}/{kind}", conv))
    return out + [
        ("final_expand", subnet.final_expand),
        ("feature_mix", subnet.feature_mix),
        ("classifier", subnet.classifier),
    ]


@torch.no_grad()
def pytorch_codes(
    subnet, x: torch.Tensor, forced_codes: dict | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits of the PyTorch eval subnet and the uint8 codes of its input quantizers, by conv name.

    Codes are computed from each quantized conv's input as its eval forward does
    (``qfa_deploy.nn.integer_conv.quantize_codes``).

    With ``forced_codes`` (another runtime's codes), each conv still records the codes it computes
    from its input but then runs on ``(q_forced - Z) s - c``, an input that quantizes back to exactly
    those codes (teacher forcing). Every quantizer then sees the upstream codes of the other runtime,
    so a difference in the returned codes is that quantizer's own, not one propagated from an
    earlier rounding tie.
    """
    codes: dict[str, torch.Tensor] = {}

    def hook(name):
        def run(module, inputs):
            x = inputs[0]
            folded = module.folded_for(x)  # the fold the forward then runs: cached, so folded once
            codes[name] = quantize_codes(x, folded).to(torch.uint8)
            if forced_codes is None:
                return None
            fq = folded.act_quant
            forced = torch.as_tensor(np.asarray(forced_codes[name])).to(torch.float32)
            return ((forced - fq.zero_point) * fq.scale - fq.shift,)

        return run

    hooks = [conv.register_forward_pre_hook(hook(name)) for name, conv in named_quant_convs(subnet)]
    try:
        logits = subnet(x)
    finally:
        for h in hooks:
            h.remove()
    return logits, codes


def quantizer_parity(subnet, model: onnx.ModelProto, x: torch.Tensor) -> dict:
    """Quantizer-by-quantizer check of ``model`` in onnxruntime (no optimisations) against PyTorch.

    The model is run with every QuantizeLinear exposed; PyTorch then reruns on those codes
    (teacher forcing, see ``pytorch_codes``), so each quantizer's codes are compared on identical
    upstream codes. Returns the largest code difference, how many codes differ, and the logit
    difference of the forced run.
    """
    from qfa_deploy.export.onnx_export import with_code_outputs

    probe = with_code_outputs(model)
    names = [o.name.removesuffix("/quant") for o in probe.graph.output[1:]]
    outs = ort_runner(probe, optimize=False)(x.numpy())
    codes = dict(zip(names, outs[1:], strict=True))
    forced_logits, own = pytorch_codes(subnet, x, forced_codes=codes)
    worst = differing = total = 0
    for name, theirs in codes.items():
        d = np.abs(own[name].numpy().astype(np.int64) - theirs.astype(np.int64))
        worst, differing, total = max(worst, int(d.max())), differing + int((d > 0).sum()), total + d.size
    return {
        "runtime": "ort_noopt",
        "images": int(x.shape[0]),
        "quantizers": len(codes),
        "codes": total,
        "max_code_diff": worst,
        "differing_codes": differing,
        "max_abs_logit_diff": float(np.abs(forced_logits.numpy() - outs[0]).max()),
    }


def _serialized(model: onnx.ModelProto | bytes | str | Path) -> bytes:
    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString()
    if isinstance(model, bytes):
        return model
    return Path(model).read_bytes()


def ort_runner(model: onnx.ModelProto | bytes | str | Path, optimize: bool, threads: int = 1) -> Runner:
    """An onnxruntime CPU session; ``optimize=False`` disables every graph optimisation."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(_serialized(model), opts, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    return lambda x: session.run(None, {input_name: np.ascontiguousarray(x, dtype=np.float32)})


def tvm_x86_runner(model: onnx.ModelProto | bytes | str | Path, batch_size: int) -> Runner:
    """Import and compile ``model`` with TVM for generic x86 (``{"kind": "llvm"}``), batch fixed.

    Smaller batches are zero-padded to ``batch_size`` and the outputs cut back.
    """
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    proto = model if isinstance(model, onnx.ModelProto) else onnx.load_from_string(_serialized(model))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    shape = [batch_size] + [d.dim_value for d in dims[1:]]
    start = time.perf_counter()
    mod = from_onnx(proto, shape_dict={proto.graph.input[0].name: shape})
    executable = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    log.info("TVM x86 build in %.1f s", time.perf_counter() - start)
    dev = tvm.cpu()
    vm = relax.VirtualMachine(executable, dev)

    def run(x: np.ndarray) -> list[np.ndarray]:
        n = x.shape[0]
        if n > batch_size:
            raise ValueError(f"batch of {n} > the compiled batch size {batch_size}")
        padded = np.zeros(shape, dtype=np.float32)
        padded[:n] = x
        out = vm["main"](tvm.runtime.tensor(padded, dev))
        outs = [out] if hasattr(out, "numpy") else list(out)
        return [o.numpy()[:n] for o in outs]

    return run


def tvm_library_runner(library: str | Path, batch_size: int) -> Runner:
    """Run a library compiled by ``qfa_deploy.deploy.compile`` (fixed batch) on this machine."""
    import tvm
    from tvm import relax

    dev = tvm.cpu()
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), dev)

    def run(x: np.ndarray) -> list[np.ndarray]:
        outs = []
        for start in range(0, x.shape[0], batch_size):
            chunk = x[start : start + batch_size]
            padded = np.zeros((batch_size, *x.shape[1:]), dtype=np.float32)
            padded[: len(chunk)] = chunk
            out = vm["main"](tvm.runtime.tensor(padded, dev))
            out = out if hasattr(out, "numpy") else out[0]
            outs.append(out.numpy()[: len(chunk)])
        return [np.concatenate(outs)]

    return run


def compare_runtimes(
    subnet,
    model: onnx.ModelProto | bytes | str | Path,
    images: Iterable[torch.Tensor],
    runtimes: Sequence[str] = RUNTIMES,
    batch_size: int = 100,
    labels: Iterable[torch.Tensor] | None = None,
    threads: int = 1,
    library: tuple[Path, int] | None = None,
) -> dict:
    """Run every runtime on ``images`` (float NCHW batches at the subnet's resolution).

    Args:
        subnet: the calibrated eval-mode ``StaticSubnet`` the model was exported from.
        model: its ONNX export.
        images: batches of at most ``batch_size`` images.
        runtimes: names from ``RUNTIMES``; ``pytorch`` is always run (it is the reference).
        labels: the matching label batches, to report top-1 accuracy.
        threads: onnxruntime intra-op threads.
        library: ``(path, batch size)`` of a compiled library, for the ``tvm_artifact`` runtime.

    Returns:
        JSON-ready dict: images, runtimes, and per runtime ``agreement`` (fraction of images whose
        argmax equals PyTorch's), ``disagreements`` (their number) and
        ``max_margin_of_disagreements`` (the largest top-1 minus top-2 logit of PyTorch on them:
        small means only near-ties flipped), ``max_abs_logit_diff`` (vs PyTorch), ``top1`` (with labels),
        ``seconds`` (inference time), and for the ONNX-based runtimes the same two figures against
        ``ort_noopt`` (``agreement_vs_ort_noopt``, ``max_abs_logit_diff_vs_ort_noopt``).
    """
    names = _runtime_order(runtimes)
    subnet.eval()
    runners, build_seconds = _build_runners(names, subnet, model, batch_size, threads, library)
    run = _run_runtimes(runners, images, labels)
    report = {"images": int(run.logits["pytorch"].shape[0]), "runtimes": {}}
    for name in names:
        report["runtimes"][name] = _runtime_entry(name, run, build_seconds[name])
    report["logit_range"] = float(np.abs(run.logits["pytorch"]).max())
    return report


def _runtime_order(runtimes: Sequence[str]) -> list[str]:
    """``runtimes`` in ``RUNTIMES`` order, ``pytorch`` (the reference) first; an unknown name is a ValueError."""
    unknown = sorted(set(runtimes) - set(RUNTIMES))
    if unknown:
        raise ValueError(f"unknown runtime {unknown[0]!r} (known: {', '.join(RUNTIMES)})")
    return ["pytorch", *[r for r in RUNTIMES if r in runtimes and r != "pytorch"]]


def _build_runners(
    names: Sequence[str],
    subnet,
    model: onnx.ModelProto | bytes | str | Path,
    batch_size: int,
    threads: int,
    library: tuple[Path, int] | None,
) -> tuple[dict[str, Callable[[torch.Tensor], np.ndarray]], dict[str, float]]:
    """A logits function (torch batch -> numpy logits) per runtime, and the seconds each took to build."""
    folded = fold(subnet) if "folded" in names else None
    runners: dict[str, Callable[[torch.Tensor], np.ndarray]] = {}
    build_seconds: dict[str, float] = {}
    for name in names:
        start = time.perf_counter()
        if name == "pytorch":
            runners[name] = lambda x: _torch_logits(subnet, x)
        elif name == "folded":
            runners[name] = lambda x: folded_forward(folded, x).numpy()
        else:
            graph_runner = _graph_runner(name, model, batch_size, threads, library)
            runners[name] = lambda x, r=graph_runner: r(x.numpy())[0]
        build_seconds[name] = time.perf_counter() - start
    return runners, build_seconds


def _graph_runner(
    name: str,
    model: onnx.ModelProto | bytes | str | Path,
    batch_size: int,
    threads: int,
    library: tuple[Path, int] | None,
) -> Runner:
    """The ``Runner`` of an ONNX- or library-based runtime (every one but ``pytorch`` and ``folded``)."""
    if name in ("ort_noopt", "ort_default"):
        return ort_runner(model, optimize=name == "ort_default", threads=threads)
    if name == "tvm_x86":
        return tvm_x86_runner(model, batch_size)
    if library is None:  # tvm_artifact
        raise ValueError("the tvm_artifact runtime needs a compiled library")
    return tvm_library_runner(*library)


@dataclass
class _RuntimeLogits:
    """What every runtime gave on the same images: logits, inference seconds, PyTorch's top-1 margin."""
    logits: dict[str, np.ndarray]  # runtime -> (images, classes)
    seconds: dict[str, float]
    labels: np.ndarray | None
    margin: np.ndarray = field(init=False)  # PyTorch's top-1 minus top-2 logit, per image

    def __post_init__(self) -> None:
        top2 = np.sort(self.logits["pytorch"], axis=1)[:, -2:]
        self.margin = top2[:, 1] - top2[:, 0]


def _run_runtimes(
    runners: dict[str, Callable[[torch.Tensor], np.ndarray]],
    images: Iterable[torch.Tensor],
    labels: Iterable[torch.Tensor] | None,
) -> _RuntimeLogits:
    """Every runner on every batch of ``images`` (timed), logits concatenated over the batches."""
    logits: dict[str, list[np.ndarray]] = {n: [] for n in runners}
    seconds = dict.fromkeys(runners, 0.0)
    label_batches = iter(labels) if labels is not None else None
    all_labels = []
    for x in images:
        if label_batches is not None:
            all_labels.append(next(label_batches).numpy())
        for name, runner in runners.items():
            start = time.perf_counter()
            logits[name].append(np.asarray(runner(x), dtype=np.float32))
            seconds[name] += time.perf_counter() - start
    stacked = {n: np.concatenate(v) for n, v in logits.items()}
    return _RuntimeLogits(stacked, seconds, np.concatenate(all_labels) if all_labels else None)


def _runtime_entry(name: str, run: _RuntimeLogits, build_seconds: float) -> dict:
    """One runtime's line of the ``compare_runtimes`` report (see there)."""
    ref, out = run.logits["pytorch"], run.logits[name]
    disagree = out.argmax(1) != ref.argmax(1)
    entry = {
        "agreement": float(1.0 - disagree.mean()),
        "disagreements": int(disagree.sum()),
        "max_margin_of_disagreements": float(run.margin[disagree].max(initial=0.0)),
        "max_abs_logit_diff": float(np.abs(out - ref).max()),
        "seconds": round(run.seconds[name], 3),
        "build_seconds": round(build_seconds, 3),
    }
    if "ort_noopt" in run.logits and name not in ("pytorch", "ort_noopt"):
        base = run.logits["ort_noopt"]  # the exact QDQ reference for the ONNX-based runtimes
        entry["agreement_vs_ort_noopt"] = float((out.argmax(1) == base.argmax(1)).mean())
        entry["max_abs_logit_diff_vs_ort_noopt"] = float(np.abs(out - base).max())
    if run.labels is not None:
        entry["top1"] = float((out.argmax(1) == run.labels).mean())
    return entry


@torch.no_grad()
def _torch_logits(subnet, x: torch.Tensor) -> np.ndarray:
    return subnet(x).numpy()


def source_batches(source: ImageSource, resolution: int, batch_size: int) -> tuple[list, list]:
    """Images (resized to ``resolution``) and labels of ``source`` in order, as lists of batches."""
    xs, ys = [], []
    for x, y in source.batches(batch_size):
        xs.append(resize(x, resolution))
        ys.append(y)
    return xs, ys


def checkpoint_agreement(
    supernet,
    cfgs: Sequence[ArchConfig],
    calib: ImageSource,
    test: ImageSource,
    calib_batches: int = 20,
    runtimes: Sequence[str] = ("pytorch", "ort_noopt", "ort_default", "tvm_x86"),
    batch_size: int = 100,
    threads: int = 1,
    compile_library: Callable[[Path, Path], dict] | None = None,
) -> list[dict]:
    """Calibrate, fold and export each config of ``supernet``; compare the runtimes on ``test``.

    ``compile_library(onnx_path, folder)``, when given, compiles each model into ``folder`` (e.g. as
    ``qfa-deploy export --target x86`` ships it) and returns ``compile_artifact``'s metadata; that
    library runs as ``tvm_artifact`` and the report records its ``tvm_artifact_schedule``.

    Returns one ``compare_runtimes`` report per config, with its ``arch`` (short form) added.
    """
    from qfa_deploy.export.artifact import calibrate_for_export
    from qfa_deploy.export.onnx_export import export_onnx

    reports = []
    for cfg in cfgs:
        subnet = calibrate_for_export(supernet, cfg, calib, calib_batches)
        model = export_onnx(fold(subnet))
        xs, ys = source_batches(test, cfg.resolution, batch_size)
        library, names, meta = None, runtimes, None
        # a folder for the compiled library only when there is one to compile
        with tempfile.TemporaryDirectory(prefix="qfa-agreement-") if compile_library else nullcontext() as tmp:
            if compile_library is not None:
                onnx.save(model, str(Path(tmp) / "model.onnx"))
                meta = compile_library(Path(tmp) / "model.onnx", Path(tmp))
                library = (Path(tmp) / meta["library"], int(meta["inputs"][0]["shape"][0]))
                names = [*runtimes, "tvm_artifact"]
            report = compare_runtimes(subnet, model, xs, names, batch_size, labels=ys, threads=threads,
                                      library=library)
        if meta is not None:
            report["tvm_artifact_schedule"] = meta["schedule"]
        report["arch"] = cfg.short()
        report["digest"] = cfg.digest()
        log.info("%s: %s", cfg.short(), report["runtimes"])
        reports.append(report)
    return reports


def _host_is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def default_runtimes(meta: dict | None = None) -> tuple[str, ...]:
    """Every runtime that applies: TVM only on an x86-64 host, ``tvm_artifact`` only for an
    artifact compiled to an x86 library."""
    names = [r for r in RUNTIMES if r != "tvm_artifact" and (_host_is_x86() or r != "tvm_x86")]
    if meta is not None and _x86_library(meta) is not None:
        names.append("tvm_artifact")
    return tuple(names)


def _x86_library(meta: dict) -> str | None:
    """The library file of an artifact compiled for an x86 llvm target (None otherwise)."""
    compiled = meta.get("compile")
    if not isinstance(compiled, dict) or not compiled.get("library") or not _host_is_x86():
        return None
    target = compiled.get("target")
    if not isinstance(target, dict) or target.get("kind") != "llvm":
        return None
    triple = str(target.get("mtriple", ""))
    return compiled["library"] if triple.startswith("x86_64") or not triple else None


def compare_constants(model: onnx.ModelProto, rebuilt: onnx.ModelProto) -> dict:
    """How far the initializers of ``rebuilt`` are from ``model``'s (integer codes; relative floats)."""
    from onnx import numpy_helper

    ours = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    theirs = {t.name: numpy_helper.to_array(t) for t in rebuilt.graph.initializer}
    int_diff, float_diff = 0, 0.0
    for name in ours.keys() & theirs.keys():
        a, b = ours[name], theirs[name]
        if a.shape != b.shape or a.dtype != b.dtype:
            int_diff = max(int_diff, 1 << 30)
            continue
        if np.issubdtype(a.dtype, np.integer):
            int_diff = max(int_diff, int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max(initial=0)))
        else:
            denom = np.maximum(np.abs(a), 1e-12)
            float_diff = max(float_diff, float((np.abs(a - b) / denom).max(initial=0.0)))
    mismatched = sorted(ours.keys() ^ theirs.keys())
    return {
        "identical": int_diff == 0 and float_diff == 0.0 and not mismatched,
        "max_integer_diff": int_diff,
        "max_relative_float_diff": float_diff,
        "unmatched_initializers": len(mismatched),
    }


@dataclass(frozen=True)
class VerifyConfig:
    """What ``verify_artifact`` checks (``qfa-deploy verify``'s options), validated when made.

    Attributes:
        folder: the export artifact.
        limit: compare on the first ``limit`` test images only (None: the whole test split).
        data_dir: data directory (None: the one recorded at export, else the default).
        runtimes: names from ``RUNTIMES`` (None: ``default_runtimes`` of the artifact).
        batch_size: images per batch.
        threads: onnxruntime intra-op threads.
    """

    folder: str | Path
    limit: int | None = None
    data_dir: str | Path | None = None
    runtimes: tuple[str, ...] | None = None
    batch_size: int = 100
    threads: int = 1

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise QfaError("--limit must be at least 1")
        unknown = [r for r in self.runtimes or () if r not in RUNTIMES]
        if unknown:
            raise QfaError(f"unknown runtime {unknown[0]!r} (known: {', '.join(RUNTIMES)})")


def verify_artifact(config: VerifyConfig) -> dict:
    """The parity report of an export artifact on the test split.

    The subnet is rebuilt from the checkpoint recorded in ``meta.json`` (its sha256 must match)
    and calibrated as recorded; ``rebuild`` says whether that reproduces the exported constants,
    ``quantizers`` is ``quantizer_parity`` on the first batch, the rest ``compare_runtimes``.
    """
    from qfa_deploy.data import load_splits
    from qfa_deploy.export.artifact import calibrate_for_export, read_artifact
    from qfa_deploy.export.onnx_export import export_onnx

    folder = Path(config.folder)
    meta = read_artifact(folder)
    model = _read_exported_model(folder)  # before the checkpoint loads and calibrates
    net = _recorded_supernet(folder, meta)
    cfg = _recorded_arch(folder, meta, net.space.name)
    calib = meta["calibration"]
    splits = load_splits(net.space, config.data_dir if config.data_dir is not None else calib.get("data_dir"))
    subnet = calibrate_for_export(net, cfg, splits.val, calib["batches"], calib.get("batch_size", 100))
    rebuild = compare_constants(model, export_onnx(fold(subnet), opset=model.opset_import[0].version))
    test = splits.test.subset(config.limit) if config.limit else splits.test
    xs, ys = source_batches(test, cfg.resolution, config.batch_size)
    quantizers = quantizer_parity(subnet, model, xs[0])
    names = tuple(config.runtimes) if config.runtimes else default_runtimes(meta)
    library = _artifact_library(folder, meta) if "tvm_artifact" in names else None
    report = compare_runtimes(subnet, model, xs, names, config.batch_size, labels=ys, threads=config.threads,
                              library=library)
    return {
        "artifact": str(folder),
        "arch": cfg.short(),
        "target": meta.get("target"),
        "rebuild": rebuild,
        "quantizers": quantizers,
        **report,
    }


def _read_exported_model(folder: Path) -> onnx.ModelProto:
    """The artifact's ONNX model; a corrupt file is a one-line QfaError."""
    from qfa_deploy.export.artifact import ONNX_NAME

    try:
        return onnx.load(str(folder / ONNX_NAME))
    except Exception as exc:  # protobuf raises its own DecodeError (and others) on a corrupt file
        raise QfaError(f"{folder}: {ONNX_NAME} is not a readable ONNX model ({exc.__class__.__name__})") from None


def _recorded_supernet(folder: Path, meta: dict):
    """The supernet of the checkpoint ``meta`` records, refused if that file is gone or changed."""
    from qfa_deploy.checkpoint import load_supernet
    from qfa_deploy.digest import file_sha256

    ckpt = Path(meta["checkpoint"]["path"])
    if not ckpt.is_file():
        raise QfaError(f"{folder}: its checkpoint {ckpt} no longer exists")
    if file_sha256(ckpt) != meta["checkpoint"]["sha256"]:
        raise QfaError(f"{folder}: checkpoint {ckpt} changed since the export (sha256 differs)")
    return load_supernet(str(ckpt))


def _recorded_arch(folder: Path, meta: dict, space: str) -> ArchConfig:
    """The arch config ``meta`` records, of ``space``; a bad one is a QfaError naming the artifact."""
    try:
        return ArchConfig.from_dict(meta["arch"], expect_space=space)
    except QfaError as exc:
        raise QfaError(f"{folder}: {exc}") from None


def _artifact_library(folder: Path, meta: dict) -> tuple[Path, int]:
    """``(path, batch size)`` of the artifact's x86 library, for the ``tvm_artifact`` runtime."""
    lib = _x86_library(meta)
    if lib is None:
        raise QfaError(f"{folder}: no x86 library to run (export it with --target x86)")
    inputs = meta["compile"].get("inputs") or [{"shape": [1]}]
    return folder / lib, int(inputs[0]["shape"][0])
