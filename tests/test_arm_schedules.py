"""The integer ARM schedules (Pi 4 ``tiled-neon``, Pi 5 ``tiled-dotprod``) on an emulated Pi: bit-identical
to onnxruntime (graph optimisations off), codes and logits, on four CIFAR-10 configs, and the Pi 5 on
a one-conv model of every 8-bit code (slow).

Each config is exported twice from a calibrated random-weight supernet: as deployed (logits only: the
codes pass between integer convs channel-blocked) and with every QuantizeLinear's uint8 codes as
extra outputs. Both are cross-compiled for both schedules, run in one aarch64 python under
qemu-user (the emulated Pi's image, without its RPC server; qemu's default CPU, ``max``, has the
dot-product instructions), and compared with onnxruntime on two seeded inputs. The generated code
is checked for the instructions the schedules are meant to use (the Pi 4's bit-serial ``cnt`` in the
W2A2 largest). ~25 min on this 2-core machine under load (16 cross-compiles), ~30 s of it under qemu.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from deploy_helpers import EXAMPLES
from epilogue_models import one_conv_model

from qfa_deploy.deploy import compile_artifact

needs_cross = pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None,
                                 reason="aarch64-linux-gnu-gcc missing (apt-get install gcc-aarch64-linux-gnu)")

SCHEDULES = {"tiled-neon": ("rasp4b-emulated", ("smull", "smlal2", "sadalp")),
             "tiled-dotprod": ("rasp5-emulated", ("sdot",))}
BITSERIAL = ("cnt", "uadalp")  # tiled-neon's low-bit 1x1 convs (targets.arm.bitserial), in the W2A2 largest
# device side: for each (library, inputs .npz, outputs .npz), run main on every input, save every output
DEVICE_SCRIPT = """
import sys
import numpy as np
import tvm
from tvm.runtime.vm import VirtualMachine

def flat(r):
    return [r.numpy()] if hasattr(r, "numpy") else [a for item in r for a in flat(item)]

for lib, inputs, outputs in zip(*[iter(sys.argv[1:])] * 3):
    vm = VirtualMachine(tvm.runtime.load_module(lib), tvm.cpu())
    data = np.load(inputs)
    np.savez(outputs, **{f"{name}/{i}": out for name in data.files
                         for i, out in enumerate(flat(vm["main"](tvm.runtime.tensor(data[name], tvm.cpu()))))})
"""


def _configs(space: str):
    from qfa_deploy.arch import load_arch, sample_arch

    largest = load_arch(EXAMPLES / "cifar10-largest-w4a4.json", expect_space=space)
    return {"largest-w4a4": largest,
            "largest-w2a2": largest.with_uniform_bits(2, 2),  # wide enough for the A72's bit-serial 1x1 convs
            "smallest-w2a2": load_arch(EXAMPLES / "cifar10-smallest-w2a2.json", expect_space=space),
            "random": sample_arch(space, random.Random(11))}


def _export(folder, supernet, cfg, seed: int):
    """(deployed model, model with the codes as outputs) of ``cfg``, calibrated on random batches."""
    from qfa_deploy.calibrate import calibrate
    from qfa_deploy.export.onnx_export import export_onnx, save_onnx
    from qfa_deploy.extract import extract
    from qfa_deploy.fold import fold

    subnet = extract(supernet, cfg)
    g = torch.Generator().manual_seed(seed)
    size = cfg.resolution
    calibrate(subnet, (torch.randn(8, 3, size, size, generator=g) for _ in range(2)), size, 2)
    folded = fold(subnet.eval())
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, expose in (("deployed", False), ("codes", True)):
        paths[name] = folder / f"{name}.onnx"
        save_onnx(export_onnx(folded, batch=1, expose_codes=expose), paths[name])
    return paths


def _blocked_edge_count(caplog) -> int:
    (message,) = [r.getMessage() for r in caplog.records if "hand their codes over channel-blocked" in r.getMessage()]
    return int(re.search(r"(\d+) integer conv -> integer conv edges", message).group(1))


def _instructions(lib) -> set[str]:
    dump = subprocess.run(["aarch64-linux-gnu-objdump", "-d", "--no-show-raw-insn", str(lib)],
                          capture_output=True, text=True, check=True).stdout
    rows = (line.split() for line in dump.splitlines() if line.startswith(" "))
    return {fields[1] for fields in rows if len(fields) > 1}


@pytest.mark.slow
@needs_cross
def test_arm_integer_schedules_are_bit_identical_to_onnxruntime(tmp_path, cifar_supernet, emulated_pi_image, caplog):
    from qfa_deploy.deploy.parity import onnxruntime_outputs, random_inputs

    image = emulated_pi_image
    caplog.set_level(logging.INFO, logger="qfa_deploy")
    artifacts = []  # (config, model kind, schedule, onnx path, folder, inputs)
    edges = {}  # (config, model kind, schedule) -> integer conv edges handing their codes over blocked
    for c, (config, cfg) in enumerate(_configs(cifar_supernet.space.name).items()):
        models = _export(tmp_path / config, cifar_supernet, cfg, seed=c)
        for kind, onnx_path in models.items():
            for schedule, (device, wanted) in SCHEDULES.items():
                folder = tmp_path / config / f"{kind}-{schedule}"
                caplog.clear()
                meta = compile_artifact(onnx_path, device, folder)  # "auto": the profile's target picks it
                assert meta["schedule"] == schedule
                edges[config, kind, schedule] = _blocked_edge_count(caplog)
                if shutil.which("aarch64-linux-gnu-objdump"):
                    found = _instructions(folder / "model.so")
                    assert set(wanted) <= found, (config, schedule)
                    if config == "largest-w2a2" and schedule == "tiled-neon":
                        assert set(BITSERIAL) <= found, config
                inputs = {str(seed): random_inputs(meta["inputs"], seed=seed)[0] for seed in range(2)}
                np.savez(folder / "inputs.npz", **inputs)
                artifacts.append((config, kind, schedule, onnx_path, folder, meta, inputs))
    # 8-bit codes (every code 0..255 a pixel): the A76 shifts them to q - 128 for sdot (codes of the search
    # space's bits, all below 128, it reads in place)
    onnx_path, every_code = one_conv_model(tmp_path / "every-code.onnx", "relu")
    folder = tmp_path / "every-code" / "deployed-tiled-dotprod"
    meta = compile_artifact(onnx_path, SCHEDULES["tiled-dotprod"][0], folder)
    inputs = {"0": every_code, "1": np.ascontiguousarray(every_code[..., ::-1])}
    np.savez(folder / "inputs.npz", **inputs)
    artifacts.append(("every-8-bit-code", "deployed", "tiled-dotprod", onnx_path, folder, meta, inputs))
    # the A76's 16-channel sdot tiles hand their codes blocked to the 4-channel depthwise blocks too
    # (codes exposed as outputs have two readers: none is re-laid out)
    for config, kind, _ in edges:
        assert edges[config, kind, "tiled-dotprod"] == edges[config, kind, "tiled-neon"], edges
        assert (edges[config, kind, "tiled-neon"] > 0) == (kind == "deployed"), edges
    script = tmp_path / "run_on_pi.py"
    script.write_text(DEVICE_SCRIPT)
    args = [str(f) for *_, folder, _, _ in artifacts
            for f in (folder / "model.so", folder / "inputs.npz", folder / "outputs.npz")]
    subprocess.run(image.command(str(script), *args), env=image.environment(), check=True, timeout=1800)
    for config, kind, schedule, onnx_path, folder, meta, inputs in artifacts:
        results = np.load(folder / "outputs.npz")
        for seed, x in inputs.items():
            reference = onnxruntime_outputs(onnx_path, meta["inputs"], [x])
            ours = [results[f"{seed}/{i}"] for i in range(len(reference))]
            assert len(results.files) == 2 * len(reference) and (len(reference) > 1) == (kind == "codes")
            for i in [*range(1, len(ours)), 0]:  # codes in graph order (the first to differ), then logits
                assert ours[i].dtype == reference[i].dtype, (config, kind, schedule, i)
                np.testing.assert_array_equal(ours[i], reference[i], err_msg=f"{config} {kind} {schedule} output {i}")
