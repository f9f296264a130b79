"""Profile an artifact folder on a device: latency per the device's protocol, and parity with ORT.

An artifact folder holds ``model.so`` (from :func:`compile_artifact`), and usually ``model.onnx``
(the reference for the numbers) and ``meta.json`` (what compiled it).
"""

from __future__ import annotations

import logging
from pathlib import Path

from qfa_deploy.deploy._text import one_line
from qfa_deploy.deploy.compile import LIBRARY_NAME, onnx_input_specs
from qfa_deploy.deploy.device import Device, load_device
from qfa_deploy.deploy.parity import compare_outputs, onnxruntime_outputs, random_inputs
from qfa_deploy.deploy.runner import open_session
from qfa_deploy.digest import file_sha256
from qfa_deploy.errors import QfaError
from qfa_deploy.strict_json import parse_json

__all__ = ["EMULATED_LABEL", "LATENCY_LABEL", "META_NAME", "ONNX_NAME", "SIMULATED_LABEL", "load_meta",
           "profile_artifact"]

log = logging.getLogger(__name__)

ONNX_NAME = "model.onnx"
META_NAME = "meta.json"
LATENCY_LABEL = "latency"
EMULATED_LABEL = "emulated (not latency)"
SIMULATED_LABEL = "simulated (estimated cycles at the nominal clock, docs/simulation.md)"


def profile_artifact(
    artifact_dir: Path,
    device: str | Device,
    *,
    tracker: str | None = None,
    key: str | None = None,
    seed: int = 0,
    timeout: float = 30.0,
    check: bool = True,
    layers: bool = False,
) -> dict:
    """Measure ``artifact_dir/model.so`` on ``device`` and check its output against onnxruntime.

    Args:
        artifact_dir: the folder with model.so (+ model.onnx, meta.json).
        device: device name, alias or profile path.
        tracker: "HOST:PORT" replacing the profile's tracker (rpc-tracker runners).
        key: replaces the profile's tracker key.
        seed: seed of the random input.
        timeout: bound on reaching the device and being granted a board, in seconds.
        check: compare with onnxruntime (needs model.onnx).
        layers: also where the time goes, per compiled function and kind of layer (this machine or a
            simulated device; ``deploy.layer_times``).

    Returns:
        JSON-ready dict: device, runner, timing ("latency" or "emulated (not latency)"),
        latency_ms {median, p10, p90, mean, min, max}, protocol, parity (or None), library_sha256,
        layers (or None).
    """
    artifact_dir = Path(artifact_dir)
    dev = _with_overrides(load_device(device), tracker, key)
    lib_path, meta, sha = _checked_library(artifact_dir, dev)
    onnx_path = artifact_dir / ONNX_NAME
    specs = _input_specs(artifact_dir, meta)
    simulated = dev.runner.kind == "simulated"
    check = check and not simulated  # a simulated device computes no outputs to check
    if check and not onnx_path.is_file():
        raise QfaError(f"{artifact_dir} has no {ONNX_NAME} to check the output against (or pass --no-check)")
    inputs = random_inputs(specs, seed=seed)

    with open_session(dev, timeout=timeout) as session:
        vm = session.load(lib_path)
        outputs = None if simulated else session.run(vm, inputs)
        timing = session.time(vm, inputs)
        breakdown = session.layer_times(lib_path, inputs) if layers else None
    parity = compare_outputs(outputs, onnxruntime_outputs(onnx_path, specs, inputs)) if check else None
    return {
        "artifact": str(artifact_dir),
        "device": dev.name,
        "runner": dev.runner.to_dict(),
        "emulated": dev.emulated,
        "timing": SIMULATED_LABEL if simulated else EMULATED_LABEL if dev.emulated else LATENCY_LABEL,
        "latency_ms": timing.summary_ms(),
        "protocol": {**dev.protocol.to_dict(), "threads": dev.threads, "timer": "time_evaluator",
                     "repeats_measured": len(timing.seconds)},
        "inputs": specs,
        "seed": seed,
        "parity": parity,
        "target": meta.get("target"),
        "library_sha256": sha,
        "layers": breakdown,
    }


def _checked_library(artifact_dir: Path, dev: Device) -> tuple[Path, dict, str]:
    """(model.so, meta.json's fields, the library's sha256) of an artifact folder, checked: the library
    exists, matches its meta.json and was compiled for ``dev``'s kind of target."""
    lib_path = artifact_dir / LIBRARY_NAME
    if not artifact_dir.is_dir():
        raise QfaError(f"artifact folder {artifact_dir} does not exist")
    if not lib_path.is_file():
        raise QfaError(f"{artifact_dir} has no {LIBRARY_NAME} (compile it first: qfa-deploy compile)")
    meta = load_meta(artifact_dir)
    sha = file_sha256(lib_path)
    expected_sha = meta.get("library_sha256")
    if expected_sha and expected_sha != sha:
        raise QfaError(f"{lib_path} does not match its {META_NAME} (sha256 differs): recompile the artifact")
    _check_target_kind(meta, dev)
    return lib_path, meta, sha


def _input_specs(artifact_dir: Path, meta: dict) -> list[dict]:
    """The model's inputs: read from model.onnx if there is one, else from meta.json."""
    onnx_path = artifact_dir / ONNX_NAME
    if onnx_path.is_file():
        import onnx

        try:
            model = onnx.load(str(onnx_path), load_external_data=False)
        except Exception as exc:  # protobuf's DecodeError and kin: a truncated or foreign file
            raise QfaError(f"{onnx_path} is not a readable ONNX model: {one_line(exc)}") from None
        return _checked_specs(onnx_input_specs(model), onnx_path)
    if meta.get("inputs"):
        return _checked_specs(meta["inputs"], artifact_dir / META_NAME)
    raise QfaError(f"{artifact_dir} has neither {ONNX_NAME} nor input shapes in {META_NAME}")


MAX_INPUT_ELEMENTS = 1 << 28  # 1 GiB of float32: far above any image batch, far below a runaway shape


def _checked_specs(specs, where: Path) -> list[dict]:
    """``specs`` as a list of {"name": str, "shape": [positive ints], "dtype": a float type}, or a one-line
    error naming ``where``."""
    import numpy as np

    if not isinstance(specs, list) or not specs:
        raise QfaError(f"{where}: inputs must be a non-empty list of {{name, shape, dtype}}")
    for spec in specs:
        shape = spec.get("shape") if isinstance(spec, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(shape, list):
            raise QfaError(f"{where}: each input must be {{name: str, shape: [ints], dtype}}, not {spec!r:.80}")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
            raise QfaError(f"{where}: input {spec['name']!r} has shape {shape!r:.80}; dimensions must be positive "
                           "integers")
        if int(np.prod(shape, dtype=np.float64)) > MAX_INPUT_ELEMENTS:
            raise QfaError(f"{where}: input {spec['name']!r} has shape {shape!r:.80}: over {MAX_INPUT_ELEMENTS} "
                           "elements")
        try:  # (random_inputs refuses the non-float ones)
            np.dtype(spec.get("dtype", "float32"))
        except TypeError:
            raise QfaError(f"{where}: input {spec['name']!r} has dtype {spec.get('dtype')!r:.40}, not a data type") \
                from None
    return specs


def load_meta(artifact_dir: Path) -> dict:
    """``meta.json`` of an artifact folder ({} if absent); compile fields may sit under "compile"."""
    path = Path(artifact_dir) / META_NAME
    if not path.is_file():
        return {}
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise QfaError(f"cannot read {path}: {exc.strerror or exc}") from None
    meta = parse_json(text, str(path))
    if not isinstance(meta, dict):
        raise QfaError(f"{path} is not a JSON object")
    nested = meta.get("compile")  # the exporter's meta.json keeps compile_artifact's fields there
    return {**meta, **nested} if isinstance(nested, dict) else meta


def _with_overrides(dev: Device, tracker: str | None, key: str | None) -> Device:
    changes = {}
    if tracker:
        host, sep, port = tracker.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise QfaError(f"--tracker must be HOST:PORT, not {tracker!r}")
        changes.update(host=host, port=int(port))
        if dev.runner.kind == "local":
            changes["kind"] = "rpc-tracker"
    if key:
        changes["key"] = key
        if dev.runner.kind == "local" and "kind" not in changes:
            raise QfaError("--key needs an RPC device or --tracker HOST:PORT")
    return dev.with_runner(**changes) if changes else dev


def _check_target_kind(meta: dict, dev: Device) -> None:
    target = meta.get("target")
    kind = target.get("kind") if isinstance(target, dict) else None
    if kind and kind != dev.target_kind:
        raise QfaError(f"the artifact was compiled for a {kind} target; device {dev.name} is {dev.target_kind}")
