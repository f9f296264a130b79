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

__all__ = ["Journal"]


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        records, good = [], 0
        with self.path.open("rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break  # torn by a kill
                try:
                    records.append(json.loads(line))
                except (ValueError, RecursionError):  # torn, or not JSON we wrote (an integer of >4300 digits)
                    break
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
