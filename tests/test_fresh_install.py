"""A user's fresh machine: the README's first command in a new clone with no ``../shared`` beside it
and a new venv, and the package installed from a wheel (not editable) finding what it ships.

Both are slow (a venv install, a TVM compile) and run in ``.ci/run``'s slow step.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def readme_setup_commands() -> list[str]:
    """The two set-up commands of the README, in order."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Set up[^\n]*\n+```bash\n(.*?)```", text, re.S)
    assert block, "README has no set-up block"
    lines = [line for line in block.group(1).splitlines() if line.strip()]
    assert len(lines) == 2, f"README's set-up block should hold exactly two commands, not {len(lines)}"
    return lines


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QFA_", "VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p)
    return env


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_readme_first_command_in_a_fresh_clone_without_shared(tmp_path):
    clone = tmp_path / "p"  # tmp_path has no shared/ folder beside the clone
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    first, _ = readme_setup_commands()
    run = subprocess.run(["bash", "-c", first], cwd=clone, env=_clean_env(), capture_output=True, text=True,
                         timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert "wrote export/cifar10-largest-x86" in out
    assert re.search(r"median [0-9.]+ ms", out), out[-2000:]
    assert re.search(r"parity +vs .*argmax agrees", out), out[-2000:]
    assert not (clone.parent / "shared").exists()


def test_wheel_in_a_new_venv_finds_its_package_data(tmp_path):
    """A non-editable install: devices, checkpoint, calibration images, predictor and tables come
    from the installed package. The wheel goes into its own folder, imported ahead of the checkout's
    editable install, with the test venv's dependencies."""
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)],
                   check=True, timeout=600)
    (wheel,) = wheels.glob("qfa_deploy-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, timeout=600)
    probe = (
        "import qfa_deploy, sys\n"
        "from qfa_deploy.deploy.device import list_devices\n"
        "from qfa_deploy.reference import default_checkpoint, default_predictor\n"
        "from qfa_deploy.data import calibration_images\n"
        "from qfa_deploy.lut.table import LatencyTable\n"
        "from qfa_deploy.space import create_space\n"
        f"assert qfa_deploy.__file__.startswith({str(site)!r}), qfa_deploy.__file__\n"
        "print(','.join(list_devices()))\n"
        "print(default_checkpoint().stat().st_size, default_predictor().stat().st_size)\n"
        "print(len(calibration_images(create_space('qfa-mbv3-cifar10'))))\n"
        "print(LatencyTable.load('x86-1t-qfa-mbv3-cifar10-r32.json').space)\n"
    )
    env = {**_clean_env(), "PYTHONPATH": str(site), "QFA_DATA_DIR": ""}
    run = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    devices, sizes, calib, table_space = run.stdout.split("\n")[:4]
    assert {"x86", "x86-1t", "rasp4b", "cuda-sm80"} <= set(devices.split(","))
    # the installed files are the checkout's, not empty placeholders or LFS pointers
    assets = ROOT / "qfa_deploy" / "assets"
    expected = [(assets / "qfa-mbv3-cifar10.pt").stat().st_size, (assets / "predictor" / "predictor.pt").stat().st_size]
    assert [int(s) for s in sizes.split()] == expected
    assert calib == "2000" and table_space == "qfa-mbv3-cifar10"
