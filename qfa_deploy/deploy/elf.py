"""Which machine an ELF file (a compiled library) is built for."""

from __future__ import annotations

from pathlib import Path

_ELF_MACHINES = {3: "x86", 40: "arm", 62: "x86_64", 183: "aarch64", 243: "riscv"}


def elf_machine(path: Path) -> str | None:
    """The architecture an ELF file is built for ("x86_64", "aarch64", ...), None if not ELF."""
    with open(path, "rb") as f:
        header = f.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    byteorder = "little" if header[5] == 1 else "big"
    code = int.from_bytes(header[18:20], byteorder)
    return _ELF_MACHINES.get(code, f"elf-machine-{code}")
