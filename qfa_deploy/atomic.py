"""The output policy of every file or folder the package writes.

- A target that exists is refused unless the user passed ``--force`` (``check_output``).
- Files and folders are built in a staging sibling, ``.NAME.PID.XXXX.tmp``, and renamed into place
  when complete: a reader sees the old target or the new one, never a half-written one.
- The staging is removed on failure; staging left by a killed run (its PID no longer alive) is
  removed by the next run that writes the same target (``clean_stale_staging``).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from qfa_deploy.errors import QfaError

__all__ = ["atomic_write_bytes", "check_output", "clean_stale_staging", "staged_directory", "write_text_atomic"]


def _prefix(path: Path) -> str:
    # The PID says whose staging it is: a live run's is never taken for litter.
    return f".{path.name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or not a PID at all
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def clean_stale_staging(path: str | Path) -> list[Path]:
    """Remove ``.NAME.PID.*.tmp`` / ``.old`` siblings of ``path`` whose process is gone; returns them."""
    path = Path(path).absolute()
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d{{1,10}})\.[^/]*\.(tmp|old)")
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return []
    removed = []
    for sib in siblings:
        found = pattern.fullmatch(sib.name)
        if found is None or _pid_alive(int(found.group(1))):
            continue
        if sib.is_dir() and not sib.is_symlink():
            shutil.rmtree(sib, ignore_errors=True)
        else:
            sib.unlink(missing_ok=True)
        removed.append(sib)
    return removed


def check_output(
    path: str | Path, force: bool = False, *, folder: bool = False, option: str = "-o", append: bool = False,
    inputs: Iterable[str | Path | None] = (),
) -> Path:
    """Refuse ``path`` as an output before any work: it exists (without ``force``), is one of the
    command's ``inputs`` or (a folder) holds one (even with ``force``: the input would be lost), is the wrong kind
    (a folder for a file or the reverse, or a device, FIFO or socket even with ``force``), its parent
    folder is missing or cannot be written (tried by creating and removing a staging file there).
    With ``append`` (resumable outputs: a journal, a run folder, a database) an existing target of the
    right kind is kept and written into, so the folder itself must be writable. Cleans stale staging.

    Returns ``path`` made absolute.
    """
    if not str(path):
        raise QfaError(f"{option}: an empty path")
    path = Path(path).absolute()
    try:
        exists = path.is_symlink() or path.exists()
        if exists and path.exists() and not (path.is_dir() or path.is_file()):
            raise QfaError(f"{path} is not a regular file or folder ({option}); it is never replaced")
        if exists and path.is_dir() != folder:
            raise QfaError(f"{path} exists and is {'not ' if folder else ''}a directory ({option})")
        if exists and any(source is not None and _holds(path, source, folder) for source in inputs):
            raise QfaError(f"{path} is also an input of this command, or holds one ({option}): write the output "
                           "elsewhere")
        if exists and not (force or append):
            raise QfaError(f"{path} already exists (use --force to replace it)")
        if path.parent.exists() and not path.parent.is_dir():
            raise QfaError(f"cannot write into {path.parent} ({option}): a file, not a folder")
        if not path.parent.is_dir():
            raise QfaError(f"{path.parent}: no such folder ({option}); create it first")
        _try_writing_in(path if append and folder and exists else path.parent, path, option)
    except OSError as exc:  # a symlink loop, a name too long, a component that is a file
        raise QfaError(f"{path}: {_oserror(exc)} ({option})") from None
    clean_stale_staging(path)
    return path


def _holds(path: Path, source: str | Path, folder: bool) -> bool:
    """``source`` is ``path``, or (an output folder) lies inside it: replacing ``path`` would lose it."""
    try:
        if os.path.samefile(path, source):
            return True
        return folder and Path(source).resolve().is_relative_to(path.resolve())
    except OSError:  # the input is missing (its own error comes later) or not a path (a packaged name)
        return False


def _try_writing_in(folder: Path, target: Path, option: str) -> None:
    """Create and remove a staging file in ``folder`` (access() says yes to root on a read-only mount or
    /sys), then put back the folder's times: a refused command leaves no trace, not even an mtime."""
    times = os.stat(folder)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_prefix(target), suffix=".tmp", dir=folder)
    except OSError as exc:
        raise QfaError(f"cannot write into {folder} ({option}): {_oserror(exc)}") from None
    os.close(fd)
    os.unlink(tmp)
    try:
        os.utime(folder, ns=(times.st_atime_ns, times.st_mtime_ns))
    except OSError:  # another user's folder: its mtime moves, as for any write there
        pass


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(fileobj)`` on a staging file beside ``path``, fsync, then rename over it."""
    path = Path(path)
    if path.exists() and not path.is_file():  # os.replace would put a regular file in place of /dev/null
        raise QfaError(f"{path} is not a regular file; it is never replaced")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(path)
    mode = _new_file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _new_file_mode(path: Path) -> int:
    """The mode ``path`` gets: the replaced file's, else what ``open`` would give (0666 less the umask),
    so that a table or predictor is as readable as any other file the user writes."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask, read from /proc (Linux) without changing it; elsewhere set and put back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _oserror(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__


@contextmanager
def staged_directory(out: str | Path, force: bool = False) -> Iterator[Path]:
    """A fresh staging folder beside ``out`` that becomes ``out`` when the block succeeds.

    Raises ``QfaError`` at once if ``out`` exists (and ``force`` is not set), is not a directory,
    or its parent cannot be written. On any exception the staging folder is removed; with
    ``force`` an existing ``out`` is only replaced once the new one is complete.
    """
    out = Path(out).absolute()
    if out.exists() or out.is_symlink():
        if not out.is_dir():  # a file, a device, a FIFO: never replaced by a folder
            raise QfaError(f"{out} exists and is not a directory")
        if not force:
            raise QfaError(f"{out} already exists (use --force to replace it)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_staging(out)
        tmp = Path(tempfile.mkdtemp(prefix=_prefix(out), suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise QfaError(f"cannot write {out}: {_oserror(exc)}") from None
    try:
        yield tmp
        try:
            _move_into_place(tmp, out)
        except OSError as exc:
            raise QfaError(f"cannot write {out}: {_oserror(exc)}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _move_into_place(tmp: Path, out: Path) -> None:
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=_prefix(out), suffix=".old", dir=out.parent))
    try:
        os.replace(out, old / out.name)
        try:
            os.replace(tmp, out)
        except OSError:
            os.replace(old / out.name, out)
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """``text`` into ``path`` through ``atomic_write_bytes``; a directory or an OS error is one line."""
    path = Path(path)
    if path.is_dir():
        raise QfaError(f"{path} is a directory")
    try:
        atomic_write_bytes(path, lambda f: f.write(text.encode()))
    except OSError as exc:
        raise QfaError(f"cannot write {path}: {exc.strerror or exc}") from None
