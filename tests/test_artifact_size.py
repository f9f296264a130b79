"""Artifact size: the compiled library's constant bytes in meta.json and ``qfa-deploy info``.

One CIFAR-10 artifact (the smallest W2A2 subnet, the embedded checkpoint's statistics, x86) is exported
once; its meta.json is checked against the library measured independently with binutils' ``size -A``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from deploy_helpers import EXAMPLES

from qfa_deploy.deploy.elf import constant_sections, elf_sections

W2A2 = EXAMPLES / "cifar10-smallest-w2a2.json"


def size_a(path: Path) -> dict[str, int]:
    """``size -A``'s section table of ``path`` (name -> bytes)."""
    if shutil.which("size") is None:
        pytest.skip("binutils' size is not installed")
    out = subprocess.run(["size", "-A", str(path)], capture_output=True, text=True, check=True).stdout
    table = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit():
            table[parts[0]] = table.get(parts[0], 0) + int(parts[1])
    assert table, out
    return table


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    from qfa_deploy.export.pipeline import ExportConfig, export_subnet

    out = tmp_path_factory.mktemp("size") / "w2a2"
    export_subnet(ExportConfig(W2A2, out, target="x86", calib_batches=0))
    return out


def test_meta_records_the_constant_bytes_size_measures(artifact):
    meta = json.loads((artifact / "meta.json").read_text())
    compiled = meta["compile"]
    table = size_a(artifact / compiled["library"])
    rodata = {name: size for name, size in table.items() if name == ".rodata" or name.startswith(".rodata.")}
    assert rodata and compiled["constant_sections"] == rodata
    assert compiled["constant_bytes"] == sum(rodata.values())
    # the weights alone (555 k parameters, most of them int8) take several hundred kB
    assert compiled["constant_bytes"] > 400_000


def test_elf_sections_agree_with_size(artifact):
    """The reader's table is ``size -A``'s plus the non-allocated symbol and string tables."""
    ours, theirs = elf_sections(artifact / "model.so"), size_a(artifact / "model.so")
    assert {k: v for k, v in ours.items() if k in theirs} == theirs
    assert set(ours) - set(theirs) <= {".symtab", ".strtab", ".shstrtab"}
    cross = Path("/usr/aarch64-linux-gnu/lib/libc.so.6")  # another machine's ELF, where installed
    if cross.is_file():
        assert constant_sections(cross) == {k: v for k, v in size_a(cross).items() if k.startswith(".rodata")}


def test_info_prints_the_constant_bytes_beside_the_bits(artifact):
    from click.testing import CliRunner

    from qfa_deploy.cli import cli

    meta = json.loads((artifact / "meta.json").read_text())
    text = CliRunner().invoke(cli, ["info", str(artifact)], catch_exceptions=False)
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    bits = next(i for i, line in enumerate(lines) if line.strip().startswith("bits"))
    assert "weights 2-bit x33, 8-bit x3" in lines[bits]
    assert lines[bits + 1].split()[:3] == ["constants", f"{meta['compile']['constant_bytes']:,}", "B"]
    as_json = CliRunner().invoke(cli, ["info", str(artifact), "--json"], catch_exceptions=False)
    report = json.loads(as_json.output)
    assert report["artifact"]["constant_bytes"] == meta["compile"]["constant_bytes"]
    assert report["artifact"]["bits"] == meta["bits"] and report["arch"] == meta["arch"]
    # the arch config alone: the same cost lines, no artifact lines
    plain = CliRunner().invoke(cli, ["info", str(W2A2)], catch_exceptions=False)
    assert plain.exit_code == 0 and plain.output.splitlines() == lines[:len(plain.output.splitlines())]
    assert "constants" not in plain.output


def test_info_on_a_folder_that_is_no_artifact(tmp_path):
    from click.testing import CliRunner

    from qfa_deploy.cli import cli

    result = CliRunner().invoke(cli, ["info", str(tmp_path)])
    assert result.exit_code == 2 and "is a directory without meta.json" in result.output


def _logits(library: Path, images):
    from qfa_deploy.export.verify import tvm_library_runner

    return tvm_library_runner(library, 1)(images)[0]


def test_library_ships_without_debug_sections_unless_asked(artifact, tmp_path):
    """The default library has no ``.debug_*`` section; ``debug_symbols`` keeps them; both hold the same
    code and constants and give bit-identical logits, equal to onnxruntime's."""
    import numpy as np

    from qfa_deploy.deploy.compile import compile_artifact
    from qfa_deploy.export.verify import ort_runner

    meta = json.loads((artifact / "meta.json").read_text())
    stripped = artifact / meta["compile"]["library"]
    assert meta["compile"]["debug_symbols"] is False
    assert not [name for name in size_a(stripped) if name.startswith(".debug")]
    kept = compile_artifact(artifact / "model.onnx", "x86", tmp_path, debug_symbols=True)
    assert kept["debug_symbols"] is True
    with_debug = tmp_path / kept["library"]
    debug_sections = {name: size for name, size in size_a(with_debug).items() if name.startswith(".debug")}
    assert ".debug_info" in debug_sections, debug_sections
    loaded = lambda table: {k: v for k, v in table.items() if not k.startswith(".debug")}  # noqa: E731
    assert loaded(size_a(with_debug)) == loaded(size_a(stripped))  # same code and constant sizes
    assert kept["constant_bytes"] == meta["compile"]["constant_bytes"]
    assert stripped.stat().st_size + sum(debug_sections.values()) <= with_debug.stat().st_size
    images = np.random.default_rng(0).standard_normal((4, 3, 24, 24)).astype(np.float32)
    ours, theirs = _logits(stripped, images), _logits(with_debug, images)
    assert np.array_equal(ours, theirs)
    reference = np.concatenate([ort_runner(artifact / "model.onnx", optimize=False)(x[None])[0] for x in images])
    assert np.abs(ours - reference).max() <= 1e-4 and np.array_equal(ours.argmax(1), reference.argmax(1))


def test_cli_debug_symbols_flag():
    """``--debug-symbols`` on compile and export (the flag reaches compile_artifact through ExportConfig)."""
    from click.testing import CliRunner

    from qfa_deploy.cli import cli
    from qfa_deploy.export.pipeline import ExportConfig

    for command in ("compile", "export"):
        help_text = CliRunner().invoke(cli, [command, "--help"]).output
        assert "--debug-symbols" in help_text, command
    assert ExportConfig("a.json", "out").debug_symbols is False


def test_depthwise_weights_stored_as_int8_codes():
    """Blocked for the conv as before, stored as the int8 codes (a quarter of the float32 bytes)."""
    import numpy as np

    from qfa_deploy.deploy.targets.cpu.integer import pack_depthwise_weight

    w = np.random.default_rng(2).integers(-8, 8, (48, 1, 3, 3)).astype(np.int8)
    narrow, wide = pack_depthwise_weight(w, 16, "int8"), pack_depthwise_weight(w, 16)
    assert narrow.dtype == np.int8 and wide.dtype == np.float32 and narrow.flags.c_contiguous
    np.testing.assert_array_equal(narrow.astype(np.float32), wide)
    assert narrow.nbytes * 4 == wide.nbytes


def test_int8_depthwise_weights_are_bit_identical_and_smaller(artifact, tmp_path, monkeypatch):
    """tiled-vnni's int8 depthwise weights against the same build with them in float32: the constant
    bytes shrink by 3 bytes a weight, the logits are bit-identical (and onnxruntime's within 1e-4)."""
    import dataclasses

    import numpy as np
    import onnx
    from onnx import numpy_helper

    from qfa_deploy.deploy.compile import compile_artifact
    from qfa_deploy.deploy.targets.x86 import vnni
    from qfa_deploy.export.verify import ort_runner

    meta = json.loads((artifact / "meta.json").read_text())
    if meta["compile"]["schedule"] != "tiled-vnni":
        pytest.skip(f"this host compiles x86 with {meta['compile']['schedule']}")
    assert vnni.VNNI.depthwise_weight == "int8"
    float_sums = dataclasses.replace(vnni.VNNI, depthwise_int16_lanes=())  # int16 sums store int16 weights
    monkeypatch.setattr(vnni, "VNNI", float_sums)
    narrow = compile_artifact(artifact / "model.onnx", "x86", tmp_path / "int8", schedule="tiled-vnni")
    monkeypatch.setattr(vnni, "VNNI", dataclasses.replace(float_sums, depthwise_weight="float32"))
    wide = compile_artifact(artifact / "model.onnx", "x86", tmp_path / "float32", schedule="tiled-vnni")
    model = onnx.load(str(artifact / "model.onnx"))
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    depthwise = sum(  # the int8 weights of the grouped convs (every one channel-blocked here)
        weights[node.input[0]].size for node in model.graph.node
        if node.op_type == "DequantizeLinear" and node.input[0] in weights
        and weights[node.input[0]].dtype == np.int8 and weights[node.input[0]].ndim == 4
        and weights[node.input[0]].shape[1] == 1 and weights[node.input[0]].shape[2] > 1
    )
    saved = wide["constant_bytes"] - narrow["constant_bytes"]
    assert depthwise > 0 and 3 * depthwise <= saved <= 3 * depthwise + 1024, (depthwise, saved)
    images = np.random.default_rng(3).standard_normal((8, 3, 24, 24)).astype(np.float32)
    narrow_logits = _logits(tmp_path / "int8" / narrow["library"], images)
    assert np.array_equal(narrow_logits, _logits(tmp_path / "float32" / wide["library"], images))
    assert np.array_equal(narrow_logits, _logits(artifact / "model.so", images))  # and the default build's
    reference = np.concatenate([ort_runner(artifact / "model.onnx", optimize=False)(x[None])[0] for x in images])
    assert np.abs(narrow_logits - reference).max() <= 1e-4
