"""ELF files (compiled libraries): the machine they are built for, their sections and constant bytes."""

from __future__ import annotations

import struct
from pathlib import Path

from qfa_deploy.errors import QfaError

__all__ = ["CONSTANT_SECTIONS", "constant_sections", "elf_machine", "elf_sections"]

_ELF_MACHINES = {3: "x86", 40: "arm", 62: "x86_64", 183: "aarch64", 243: "riscv"}
# where a linked library keeps its read-only data: TVM's module blob (the VM's constant pool, i.e. the
# model's weights, biases and scales) and the kernels' literal pools; ".lrodata" is x86-64's large model
CONSTANT_SECTIONS = (".rodata", ".lrodata")
_SHN_XINDEX = 0xFFFF


def elf_machine(path: Path) -> str | None:
    """The architecture an ELF file is built for ("x86_64", "aarch64", ...), None if not ELF."""
    with open(path, "rb") as f:
        header = f.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    byteorder = "little" if header[5] == 1 else "big"
    code = int.from_bytes(header[18:20], byteorder)
    return _ELF_MACHINES.get(code, f"elf-machine-{code}")


def elf_sections(path: Path) -> dict[str, int]:
    """Size in bytes of each named section of the ELF file ``path``, in file order (as ``size -A``
    lists them, plus the symbol and string tables).

    Raises:
        QfaError: not an ELF file, or its section headers lie outside the file (one line).
    """
    data = Path(path).read_bytes()
    if len(data) < 52 or data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] not in (1, 2):
        raise QfaError(f"{path} is not an ELF file")
    wide = data[4] == 2  # ELFCLASS64
    end = "<" if data[5] == 1 else ">"
    try:
        if wide:
            shoff, = struct.unpack_from(end + "Q", data, 0x28)
            shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x3A)
            fmt = end + "IIQQQQ"  # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size
        else:
            shoff, = struct.unpack_from(end + "I", data, 0x20)
            shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x2E)
            fmt = end + "IIIIII"
        if shoff == 0:
            return {}
        first = struct.unpack_from(fmt, data, shoff)
        if shnum == 0:  # extended numbering: the count is section 0's size
            shnum = first[5]
        if shstrndx == _SHN_XINDEX:  # ... and the names' index its sh_link
            shstrndx, = struct.unpack_from(end + "I", data, shoff + (40 if wide else 24))
        headers = [struct.unpack_from(fmt, data, shoff + i * shentsize) for i in range(shnum)]
        names_at = headers[shstrndx][4]
    except (struct.error, IndexError):
        raise QfaError(f"{path}: truncated ELF section headers") from None
    sections = {}
    for name_offset, _type, _flags, _addr, _offset, size in headers[1:]:
        start = names_at + name_offset
        name = data[start:data.index(b"\0", start)].decode("ascii", "replace") if start < len(data) else ""
        sections[name] = sections.get(name, 0) + size
    return sections


def constant_sections(path: Path) -> dict[str, int]:
    """The sections of the library ``path`` that hold its constants (``CONSTANT_SECTIONS`` and their
    ``.NAME.*`` splits) and their sizes in bytes; their sum is the artifact's constant bytes."""
    return {name: size for name, size in elf_sections(path).items()
            if any(name == s or name.startswith(s + ".") for s in CONSTANT_SECTIONS)}
