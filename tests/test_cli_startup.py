"""``qfa-deploy --help`` (and every verb's ``--help``) starts without importing torch, onnx, onnxruntime or TVM:
the verbs import the library when they run. A module-level import of a heavy module anywhere on the CLI's
import path (e.g. ``deploy.compile`` taking ``atomic_write_bytes`` from ``checkpoint``, which imports torch)
made ``--help`` take ~3 s instead of ~0.3 s.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "onnx", "onnxruntime", "tvm")

_PROBE = """
import json, sys
{prelude}
sys.argv = ["qfa-deploy", *json.loads(sys.argv[1])]
from qfa_deploy.cli import main
try:
    main()
except SystemExit:
    pass
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)), file=sys.stderr)
"""


def heavy_modules_after(args: list[str], prelude: str = "") -> list[str]:
    """The heavy modules a fresh interpreter has imported after running ``prelude`` and the CLI with ``args``."""
    code = _PROBE.format(heavy=HEAVY, prelude=prelude)
    result = subprocess.run([sys.executable, "-c", code, json.dumps(args)],
                            capture_output=True, text=True, timeout=120, check=False)
    last = result.stderr.strip().splitlines()[-1]
    return json.loads(last)


@pytest.mark.parametrize("args", [["--help"], ["export", "--help"], ["compile", "--help"], ["eval", "--help"]])
def test_help_imports_no_heavy_module(args):
    assert heavy_modules_after(args) == []


def test_the_probe_sees_a_heavy_import():
    # the check can fail: torch imported before the CLI runs is seen
    assert heavy_modules_after(["--help"], prelude="import torch") == ["torch"]
