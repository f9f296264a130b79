"""The output policy after a kill: staging left by a killed run is removed by the next run, a live one's is not.

Each test kills a real process (SIGKILL) while it holds a staging file or folder, then starts the
next writer of the same target and checks the folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from qfa_deploy.atomic import atomic_write_bytes, check_output, clean_stale_staging, staged_directory
from qfa_deploy.errors import QfaError

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

HOLD_FOLDER = """
import sys, time
from qfa_deploy.atomic import staged_directory
with staged_directory(sys.argv[1]) as tmp:
    (tmp / "model.onnx").write_bytes(b"x" * 100_000)
    print(tmp, flush=True)
    time.sleep(120)
"""

HOLD_FILE = """
import sys, time
from pathlib import Path
from qfa_deploy.atomic import atomic_write_bytes
def write(f):
    f.write(b"y" * 100_000)
    f.flush()
    print("ready", flush=True)
    time.sleep(120)
atomic_write_bytes(Path(sys.argv[1]), write)
"""


def killed_while_writing(code: str, target: Path) -> int:
    """Run ``code`` on ``target`` until it reports it is writing, SIGKILL it; its PID."""
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip(), "the writer did not start"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    return proc.pid


def staging_of(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.*"))


def test_killed_export_folder_staging_is_removed_by_the_next_compile(tmp_path, monkeypatch):
    out = tmp_path / "art"
    pid = killed_while_writing(HOLD_FOLDER, out)
    left = staging_of(out)
    assert [p.name.split(".")[2] for p in left] == [str(pid)] and left[0].is_dir()  # litter of the kill
    assert not out.exists()
    (tmp_path / "model.onnx").write_bytes(b"not an onnx model")
    from qfa_deploy.cli import cli

    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    try:  # the next writer of the same folder fails (bad ONNX), and still cleans up after the killed one
        result = CliRunner().invoke(cli, ["compile", "model.onnx", "--device", "x86", "-o", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert staging_of(out) == [] and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_killed_checkpoint_write_is_removed_by_the_next_save(tmp_path):
    from qfa_deploy.checkpoint import load_checkpoint, save_checkpoint

    ckpt = tmp_path / "checkpoint.pt"
    pid = killed_while_writing(HOLD_FILE, ckpt)
    left = staging_of(ckpt)
    assert len(left) == 1 and left[0].name.startswith(f".checkpoint.pt.{pid}.") and left[0].stat().st_size > 0
    save_checkpoint(ckpt, "qfa-mbv3-cifar10", {"w": torch.ones(2)})
    assert staging_of(ckpt) == []
    assert load_checkpoint(ckpt)["model"]["w"].tolist() == [1.0, 1.0]


def test_killed_file_staging_is_removed_by_the_next_cli_writer(tmp_path, monkeypatch):
    from qfa_deploy.cli import cli

    cfg = tmp_path / "cfg.json"
    killed_while_writing(HOLD_FILE, cfg)
    assert len(staging_of(cfg)) == 1
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["sample", "--space", "qfa-mbv3-cifar10", "--seed", "2", "-o", str(cfg)])
    assert result.exit_code == 0, result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["cfg.json"]


def test_a_live_writers_staging_is_left_alone(tmp_path):
    target = tmp_path / "table.json"
    proc = subprocess.Popen([sys.executable, "-c", HOLD_FILE, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        live = staging_of(target)
        assert len(live) == 1
        assert clean_stale_staging(target) == []
        atomic_write_bytes(target, lambda f: f.write(b"{}"))  # another writer of the same target
        assert staging_of(target) == live
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert clean_stale_staging(target) == live  # dead now: litter
    assert target.read_bytes() == b"{}"


def test_failure_inside_a_staged_folder_leaves_nothing_and_keeps_the_old_one(tmp_path):
    out = tmp_path / "art"
    out.mkdir()
    (out / "meta.json").write_text("old")
    with pytest.raises(QfaError, match="already exists"):
        with staged_directory(out):
            pass
    with pytest.raises(RuntimeError):
        with staged_directory(out, force=True) as tmp:
            (tmp / "meta.json").write_text("new")
            raise RuntimeError("compile failed")
    assert (out / "meta.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    with staged_directory(out, force=True) as tmp:
        (tmp / "meta.json").write_text("new")
    assert (out / "meta.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_check_output_refuses_before_any_work(tmp_path):
    (tmp_path / "f.json").write_text("x")
    with pytest.raises(QfaError, match="already exists"):
        check_output(tmp_path / "f.json")
    assert check_output(tmp_path / "f.json", force=True) == tmp_path / "f.json"
    with pytest.raises(QfaError, match="no such folder"):
        check_output(tmp_path / "missing" / "f.json")
    with pytest.raises(QfaError, match="is a directory"):
        check_output(tmp_path)
    with pytest.raises(QfaError, match="is not a directory"):
        check_output(tmp_path / "f.json", force=True, folder=True)
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        with pytest.raises(QfaError, match="cannot write into"):
            check_output(ro / "f.json")
    with pytest.raises(QfaError, match=r"cannot write into /proc \(-o\)"):  # root too: access() would say yes
        check_output("/proc/f.json")
    with pytest.raises(QfaError, match="an empty path"):
        check_output("")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "ro") == ["f.json"]


def test_check_output_leaves_no_trace(tmp_path):
    """The writability probe (a staging file created and removed) leaves the folder's mtime as it was."""
    folder = tmp_path / "out"
    folder.mkdir()
    os.utime(folder, ns=(1_000_000_000, 2_000_000_000))
    check_output(folder / "f.json")
    check_output(folder, folder=True, append=True)  # an existing run folder: probed inside
    assert list(folder.iterdir()) == [] and folder.stat().st_mtime_ns == 2_000_000_000


def test_devices_and_fifos_are_never_replaced(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for kwargs in ({"force": True}, {"append": True}):
        with pytest.raises(QfaError, match="not a regular file"):
            check_output(fifo, **kwargs)
        with pytest.raises(QfaError, match="not a regular file"):
            check_output("/dev/null", **kwargs)
    with pytest.raises(QfaError, match="not a regular file"):  # the library writer refuses too
        atomic_write_bytes(fifo, lambda f: f.write(b"x"))
    assert fifo.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]


def test_resumable_outputs_are_kept_but_must_be_of_their_kind(tmp_path):
    """append: a journal, run folder or database is written into without --force; the wrong kind is refused."""
    (tmp_path / "run").mkdir()
    (tmp_path / "journal.jsonl").write_text("{}\n")
    assert check_output(tmp_path / "run", folder=True, append=True) == tmp_path / "run"
    assert check_output(tmp_path / "journal.jsonl", append=True) == tmp_path / "journal.jsonl"
    with pytest.raises(QfaError, match="is not a directory"):
        check_output(tmp_path / "journal.jsonl", folder=True, append=True)
    with pytest.raises(QfaError, match="no such folder"):
        check_output(tmp_path / "missing" / "db", folder=True, append=True)
    assert (tmp_path / "journal.jsonl").read_text() == "{}\n"


def test_written_files_get_the_umask_mode_or_keep_the_replaced_ones(tmp_path):
    """A staged file is 0600 (mkstemp); what lands is what ``open`` would make (0666 less the umask),
    or the mode of the file it replaces: a table or a predictor others read stays readable."""
    import stat

    from qfa_deploy.atomic import write_text_atomic

    mask = os.umask(0o027)
    try:
        new = tmp_path / "table.json"
        write_text_atomic(new, "{}")
        assert stat.S_IMODE(new.stat().st_mode) == 0o640
        kept = tmp_path / "kept.json"
        kept.write_text("old")
        os.chmod(kept, 0o604)
        write_text_atomic(kept, "new")
        assert kept.read_text() == "new" and stat.S_IMODE(kept.stat().st_mode) == 0o604
    finally:
        os.umask(mask)
