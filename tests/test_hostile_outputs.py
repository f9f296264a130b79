"""An output that is also the command's input is refused even with --force (the input would be lost),
and a --plot in a format matplotlib cannot write is refused before any work: one line, exit 2, every
file as it was."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from deploy_helpers import run_cli

ASSETS = Path(__file__).resolve().parents[1] / "qfa_deploy" / "assets"
TABLE = ASSETS / "latency_tables" / "x86-1t-qfa-mbv3-cifar10-r32.json"
RECORDS = ASSETS / "predictor" / "collect-seed0.jsonl"


def _refused(done, *needles: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert all(n in lines[0] for n in needles), lines[0]


def _copy(src: Path, dst: Path) -> tuple[Path, bytes]:
    shutil.copyfile(src, dst)
    return dst, dst.read_bytes()


@pytest.mark.parametrize("command", [
    lambda f: ["search", "--pop", "4", "--gen", "2", "--table", str(f), "-o", str(f), "--force"],
    lambda f: ["lut", "validate", "--table", str(f), "--device", "x86-1t", "--samples", "2", "--report", str(f),
               "--force"],
], ids=["search -o", "lut validate --report"])
def test_an_output_over_its_table_is_refused(tmp_path, command):
    table, before = _copy(TABLE, tmp_path / "table.json")
    _refused(run_cli(*command(table)), str(table), "is also an input")
    assert table.read_bytes() == before


def test_predictor_fit_over_its_records_is_refused(tmp_path):
    records, before = _copy(RECORDS, tmp_path / "records.jsonl")
    link = tmp_path / "same-records.jsonl"
    link.symlink_to(records)  # another name of the same file is the same file
    _refused(run_cli("predictor", "fit", "--model", "ridge", str(records), "-o", str(link), "--force"),
             "is also an input")
    assert records.read_bytes() == before


def test_convert_samples_over_its_source_is_refused(tmp_path):
    source = tmp_path / "samples.json"
    source.write_text('[{"acc1": 70.0}]')
    before = source.read_bytes()
    _refused(run_cli("convert", "qfa-samples", str(source), "-o", str(source), "--force"), "is also an input")
    assert source.read_bytes() == before


@pytest.mark.parametrize("command", [
    lambda d: ["search", "--pop", "4", "--gen", "2", "-o", str(d / "s.json"), "--plot", str(d / "front.xyz")],
    lambda d: ["lut", "validate", "--table", TABLE.name, "--device", "x86-1t", "--samples", "2",
               "--plot", str(d / "v.xyz"), "--report", str(d / "v.json")],
], ids=["search", "lut validate"])
def test_an_unwritable_plot_format_is_refused_first(tmp_path, command):
    _refused(run_cli(*command(tmp_path)), "cannot write .xyz images", "png")
    assert list(tmp_path.iterdir()) == []


def test_an_output_folder_holding_an_input_is_refused(tmp_path):
    """`export --out D --force` with D/cfg.json as --arch would delete its own input; `compile -o D`
    with D as the tuning --database would replace the database by the artifact."""
    folder = tmp_path / "run"
    folder.mkdir()
    arch = folder / "cfg.json"
    arch.write_text((Path(__file__).resolve().parents[1] / "export" / "cifar10-largest-w4a4.json").read_text())
    before = arch.read_bytes()
    _refused(run_cli("export", "--arch", str(arch), "--target", "onnx", "--out", str(folder), "--force"),
             "holds one (--out)")
    assert arch.read_bytes() == before and list(folder.iterdir()) == [arch]
    database = tmp_path / "db"
    database.mkdir()
    (tmp_path / "m.onnx").write_bytes(b"")
    _refused(run_cli("compile", str(tmp_path / "m.onnx"), "--device", "x86-1t", "--database", str(database),
                     "-o", str(database), "--force"), "is also an input")
    assert list(database.iterdir()) == []


def test_a_path_with_a_newline_is_still_one_line():
    done = run_cli("info", "/nonexistent\nsecond line.json")
    _refused(done, "/nonexistent\\nsecond line.json: no such arch config")


@pytest.mark.parametrize("command", [
    lambda d: ["emulated-pi", "build", "--cache", str(d / "missing" / "pi")],
    lambda d: ["convert", "qfa-gene", "[" + ",".join(["3"] * 176) + "]", "--all", str(d / "missing" / "genes")],
], ids=["emulated-pi --cache", "convert qfa-gene --all"])
def test_an_output_folder_in_a_missing_parent_is_refused(tmp_path, command):
    """Not made with its parents (the emulated Pi built a 700 MB image under /nonexistent)."""
    _refused(run_cli(*command(tmp_path)), "no such folder")
    assert list(tmp_path.iterdir()) == []


def test_records_of_one_top1_fit_no_predictor(tmp_path):
    """A fit on targets of zero spread reported Spearman NaN (and printed bare NaN as --json)."""
    import json

    same = tmp_path / "same.jsonl"
    same.write_text("".join(json.dumps({**json.loads(line), "top1": 0.5}) + "\n"
                            for line in RECORDS.read_text().splitlines()[:40]))
    _refused(run_cli("predictor", "fit", "--model", "ridge", str(same), "-o", str(tmp_path / "p.pt"), "--json"),
             "all 40 subnets have the same top-1 (50.00%)")
    assert not (tmp_path / "p.pt").exists()
