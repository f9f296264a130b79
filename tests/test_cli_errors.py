"""Bad input to the ``qfa-deploy`` console script: exit status 2, one line on stderr, nothing written.

Each case runs the installed console script as a real subprocess in an empty working directory, so
a stray output file, a traceback or a multi-line message cannot hide.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from qfa_deploy.arch import ArchConfig, sample_arch

CIFAR = "qfa-mbv3-cifar10"


class Marker:
    """Not a tensor: a checkpoint holding one must be refused by the weights_only loader."""


def _script() -> list[str]:
    name = "qfa-deploy.exe" if os.name == "nt" else "qfa-deploy"
    candidate = Path(sysconfig.get_path("scripts")) / name
    if candidate.is_file():
        return [str(candidate)]
    found = shutil.which("qfa-deploy")
    if found is None:
        pytest.fail("the qfa-deploy console script is not installed (pip install -e .)")
    return [found]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Good and bad configs and checkpoints, shared by every case (read only)."""
    import random

    from qfa_deploy.checkpoint import save_checkpoint
    from qfa_deploy.nn.supernet import QFASupernet

    d = tmp_path_factory.mktemp("inputs")
    good = sample_arch(CIFAR, random.Random(1)).to_dict()
    (d / "good.json").write_text(json.dumps(good))

    def variant(name: str, edit) -> None:
        data = json.loads(json.dumps(good))
        edit(data)
        (d / name).write_text(json.dumps(data))

    (d / "invalid.json").write_text('{"space": "qfa-mbv3-cifar10",\n "resolution": 32,,}')
    (d / "list.json").write_text("[1, 2, 3]")
    (d / "binary.json").write_bytes(b"\xff\xfe\x00garbage\x80")
    (d / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    variant("unknown_field.json", lambda c: c.update(colour="blue"))
    variant("missing_field.json", lambda c: c.pop("depths"))
    variant("unknown_space.json", lambda c: c.update(space="resnet-9000"))
    variant("kernel.json", lambda c: c["blocks"][3].update(kernel=9))
    variant("bits8.json", lambda c: c["blocks"][0]["w_bits"].__setitem__(1, 8))
    variant("first_bits.json", lambda c: c["first_block"].update(a_bits=[4]))
    variant("length.json", lambda c: c.update(depths=[2, 2, 2, 2]))
    variant("blocks_length.json", lambda c: c["blocks"].pop())
    variant("depth.json", lambda c: c["depths"].__setitem__(2, 5))
    variant("resolution.json", lambda c: c.update(resolution=224))
    variant("bits_type.json", lambda c: c["blocks"][1].update(a_bits=4))
    variant("version.json", lambda c: c.update(version=7))
    (d / "imagenet.json").write_text(ArchConfig.largest("qfa-mbv3-w1.2").to_json())

    save_checkpoint(d / "cifar.pt", CIFAR, QFASupernet(CIFAR).state_dict())
    (d / "random.pt").write_bytes(random.Random(0).randbytes(4096))
    (d / "empty.pt").write_bytes(b"")
    torch.save({"weights": torch.zeros(3), "epoch": 4}, d / "foreign.pt")
    torch.save({"format": "qfa-supernet", "version": 1, "space": CIFAR, "model": {}, "note": Marker()},
               d / "pickled.pt")
    torch.save({"format": "qfa-supernet", "version": 99, "space": CIFAR, "model": {}}, d / "future.pt")
    return d


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("QFA_DATA_DIR", None)
    return subprocess.run(
        [*_script(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL,
    )


# (case id, argv with {in} for the inputs directory, words the one-line message must contain).
# Each kind runs as a real subprocess of the console script.
CASES = [
    ("missing-file", ["info", "{in}/nope.json"], ["nope.json", "no such arch config"]),
    ("invalid-json", ["info", "{in}/invalid.json"], ["invalid.json", "not valid JSON", "line 2"]),
    ("not-an-object", ["info", "{in}/list.json"], ["list.json", "must be a JSON object"]),
    ("unknown-field", ["info", "{in}/unknown_field.json"], ["unknown_field.json", "unknown field 'colour'"]),
    ("unknown-space", ["info", "{in}/unknown_space.json"], ["unknown space 'resnet-9000'", CIFAR]),
    ("kernel-range", ["info", "{in}/kernel.json"],
     ["kernel.json: blocks[3].kernel = 9 is not one of [3, 5, 7]"]),
    ("bits-8", ["info", "{in}/bits8.json"], ["blocks[0].w_bits[1] = 8 is not one of [2, 3, 4]"]),
    ("list-length", ["info", "{in}/length.json"], ["depths must be a list of 5 entries, got 4 entries"]),
    ("resolution", ["info", "{in}/resolution.json"], ["resolution = 224 is not one of [24, 28, 32]"]),
    (
        "eval-other-space",
        ["eval", "--checkpoint", "{in}/cifar.pt", "--arch", "{in}/imagenet.json"],
        ["imagenet.json", "'qfa-mbv3-w1.2'", f"'{CIFAR}'"],
    ),
    ("sample-bits-5", ["sample", "--space", CIFAR, "--max", "--bits", "5", "-o", "out.json"],
     ["--bits = 5", "[2, 3, 4]"]),
    (
        "corrupt-checkpoint",
        ["eval", "--checkpoint", "{in}/random.pt", "--arch", "{in}/good.json"],
        ["random.pt", "not a readable checkpoint", "corrupt"],
    ),
    ("unknown-option", ["sample", "--space", CIFAR, "--frobnicate", "-o", "out.json"],
     ["No such option", "--frobnicate"]),
]

# More kinds, checked in-process through click's runner (same group object, same error path) to
# keep the suite fast: every subprocess pays ~3 s for importing torch.
MORE_CASES = [
    ("not-utf8", ["info", "{in}/binary.json"], ["binary.json", "not UTF-8"]),
    ("missing-field", ["info", "{in}/missing_field.json"], ["missing field 'depths'"]),
    ("depth-range", ["info", "{in}/depth.json"], ["depths[2] = 5 is not one of [2, 3, 4]"]),
    ("sample-min-max", ["sample", "--space", CIFAR, "--min", "--max", "-o", "out.json"], ["--min", "--max"]),
    (
        "foreign-checkpoint",
        ["eval", "--checkpoint", "{in}/foreign.pt", "--arch", "{in}/good.json"],
        ["foreign.pt", "not a qfa-deploy supernet checkpoint"],
    ),
    ("deep-json", ["info", "{in}/deep.json"], ["deep.json", "nested too deeply"]),
    ("first-block-length", ["info", "{in}/first_bits.json"],
     ["first_block.a_bits must be a list of 2 entries, got 1 entry"]),
    ("blocks-length", ["info", "{in}/blocks_length.json"], ["blocks must be a list of 20 entries, got 19"]),
    ("bits-not-list", ["info", "{in}/bits_type.json"], ["blocks[1].a_bits = 4 must be a list"]),
    ("arch-version", ["info", "{in}/version.json"], ["version = 7"]),
    ("arch-is-dir", ["info", "{in}"], ["is a directory"]),
    ("info-both", ["info", "{in}/good.json", "--space", CIFAR], ["one of them"]),
    ("info-space", ["info", "--space", "nope"], ["unknown space 'nope'"]),
    ("eval-missing-arch", ["eval", "--checkpoint", "{in}/cifar.pt", "--arch", "{in}/nope.json"],
     ["nope.json", "no such arch config"]),
    (
        "empty-checkpoint",
        ["eval", "--checkpoint", "{in}/empty.pt", "--arch", "{in}/good.json"],
        ["empty.pt", "not a readable checkpoint", "empty"],
    ),
    (
        "pickled-class-checkpoint",
        ["eval", "--checkpoint", "{in}/pickled.pt", "--arch", "{in}/good.json"],
        ["pickled.pt", "not a readable checkpoint", "Marker"],
    ),
    (
        "checkpoint-version",
        ["eval", "--checkpoint", "{in}/future.pt", "--arch", "{in}/good.json"],
        ["future.pt", "version 99"],
    ),
    (
        "missing-checkpoint",
        ["eval", "--checkpoint", "{in}/nope.pt", "--arch", "{in}/good.json"],
        ["nope.pt", "no such checkpoint"],
    ),
    ("eval-limit", ["eval", "--checkpoint", "{in}/cifar.pt", "--arch", "{in}/good.json", "--limit", "0"],
     ["--limit"]),
    (
        "eval-calib",
        ["eval", "--checkpoint", "{in}/cifar.pt", "--arch", "{in}/good.json", "--calib-batches", "-1"],
        ["--calib-batches"],
    ),
    ("eval-threads", ["eval", "--arch", "{in}/good.json", "--threads", "-1"], ["--threads"]),
    ("sample-bits-alone", ["sample", "--space", CIFAR, "--bits", "2", "-o", "out.json"],
     ["--bits", "--min or --max"]),
    ("sample-seed-max", ["sample", "--space", CIFAR, "--seed", "1", "--max", "-o", "out.json"], ["--seed"]),
    ("sample-output-dir", ["sample", "--space", CIFAR, "--seed", "1", "-o", "{in}"], ["is a directory"]),
    ("unknown-command", ["frobnicate"], ["frobnicate"]),
    ("missing-option", ["sample", "-o", "out.json"], ["--space"]),
    ("bad-int", ["sample", "--space", CIFAR, "--seed", "three", "-o", "out.json"], ["--seed", "three"]),
]


def check_one_line_error(code: int, stdout: str, stderr: str, words: list[str], cwd: Path, inputs: Path,
                         before: set[str]) -> None:
    lines = stderr.splitlines()
    assert code == 2, (code, stderr)
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert stdout == ""
    assert list(cwd.iterdir()) == []  # no output file, no temporary left behind
    assert set(os.listdir(inputs)) == before


@pytest.mark.parametrize(("argv", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(inputs, tmp_path, argv, words):
    before = set(os.listdir(inputs))
    proc = run_cli([a.replace("{in}", str(inputs)) for a in argv], cwd=tmp_path)
    check_one_line_error(proc.returncode, proc.stdout, proc.stderr, words, tmp_path, inputs, before)


@pytest.mark.parametrize(("argv", "words"), [c[1:] for c in MORE_CASES], ids=[c[0] for c in MORE_CASES])
def test_more_bad_input_in_process(inputs, tmp_path, monkeypatch, argv, words):
    from click.testing import CliRunner

    from qfa_deploy.cli import cli

    before = set(os.listdir(inputs))
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(cli, [a.replace("{in}", str(inputs)) for a in argv])
    finally:
        torch.set_num_threads(threads)
    assert not isinstance(result.exception, AssertionError)
    check_one_line_error(result.exit_code, result.stdout, result.stderr, words, tmp_path, inputs, before)


def test_python_is_this_interpreter():
    # the console script must run the interpreter (and so the install) the tests import
    first = Path(_script()[0]).read_text(errors="replace").splitlines()[0]
    assert first.startswith("#!") and Path(first[2:].split()[0]).resolve() == Path(sys.executable).resolve()
