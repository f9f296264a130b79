"""An append-only JSON-lines journal that survives SIGKILL at any point.

Each record is one line, written with a single ``write`` and fsynced; a line torn by a kill is
ignored when reading (and cut off before the next append), so a rerun loses at most the one
measurement that was in flight.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from qfa_deploy.errors import QfaError

__all__ = ["Journal"]


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def read(self) -> list[dict]:
        """The records, a torn last line cut off. Only the last line can be torn (it lacks its newline),
        and every record is a JSON object: anything else means the file is not a journal, and it is
        refused, never cut."""
        if not self.path.exists():
            return []
        lines = self.path.read_bytes().splitlines(keepends=True)
        records, good = [], 0
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line) if line.endswith(b"\n") else None
            except (ValueError, RecursionError):  # not JSON we wrote (e.g. an integer of >4300 digits)
                record = None
            if record is None:
                if number == len(lines) and not line.endswith(b"\n") and line.startswith(b"{"):
                    break  # torn by a kill: one write of a whole line, newline last, stopped part-way
                raise QfaError(f"{self.path}:{number}: not a journal line: remove the file (or write elsewhere)")
            records.append(record)
            good += len(line)
        if good != self.path.stat().st_size:
            os.truncate(self.path, good)
        return records

    def append(self, record: dict) -> None:
        data = (json.dumps(record, sort_keys=True) + "\n").encode()
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
