"""The README's "Python API" example runs as written (so the README stays true)."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_api_block() -> str:
    text = README.read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the Python API section holds one python block"
    return blocks[0]


def test_readme_python_api_runs(tmp_path, monkeypatch, capsys):
    script = tmp_path / "readme_api.py"
    script.write_text(python_api_block())
    monkeypatch.chdir(tmp_path)  # the example writes subnet.onnx in the working directory
    runpy.run_path(str(script), run_name="__main__")
    onnx_file = tmp_path / "subnet.onnx"
    assert onnx_file.stat().st_size > 0
    assert "top-1:" in capsys.readouterr().out
