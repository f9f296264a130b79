"""`profile` on an artifact folder whose meta.json input shapes or model.onnx are malformed: one line
naming the file, exit 2, before any library is loaded (so a placeholder model.so serves)."""

from __future__ import annotations

import json

import pytest
from deploy_helpers import run_cli


@pytest.mark.parametrize("inputs, needle", [
    ("x", "inputs must be a non-empty list"),
    ([5], "each input must be {name: str"),
    ([{"name": "x", "shape": [-1, 3, 32, 32], "dtype": "float32"}], "dimensions must be positive integers"),
    ([{"name": "x", "shape": [1, 3, 32.5, 32], "dtype": "float32"}], "dimensions must be positive integers"),
    ([{"name": "x", "shape": [100000, 3, 100000, 100000], "dtype": "float32"}], "over 268435456 elements"),
    ([{"name": "x", "shape": [1, 3, 32, 32], "dtype": "bogus"}], "not a data type"),
    ([{"name": "x", "shape": [1, 3, 32, 32], "dtype": "int32"}], "only float inputs are supported"),
])
def test_malformed_input_shapes_in_meta(tmp_path, inputs, needle):
    (tmp_path / "model.so").write_bytes(b"\x7fELF placeholder")
    (tmp_path / "meta.json").write_text(json.dumps({"inputs": inputs}))
    done = run_cli("profile", str(tmp_path), "--device", "x86-1t", "--no-check")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and needle in done.stderr, done.stderr


def test_truncated_onnx(tmp_path):
    (tmp_path / "model.so").write_bytes(b"\x7fELF placeholder")
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07\x12\x04trunc\x3a\xff\xff")
    done = run_cli("profile", str(tmp_path), "--device", "x86-1t")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "model.onnx is not a readable ONNX model" in done.stderr and len(done.stderr.strip().splitlines()) == 1
