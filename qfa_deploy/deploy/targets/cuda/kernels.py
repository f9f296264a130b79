"""CUDA kernels compiled ahead of time with nvcc and embedded in the library (no GPU needed).

TVM 0.27's CUDA codegen (``target.build.cuda``) always emits CUDA C source. Where its CUDA runtime
plugin (``libtvm_runtime_cuda``) can load, the module factory compiles that source at once through
the Python hook ``tvm_callback_cuda_compile`` (NVRTC, or nvcc with ``TVM_CUDA_COMPILE_MODE=nvcc``);
where it cannot (no ``libcuda.so.1``, as on a build machine without a GPU driver), codegen keeps a
fallback module holding the source, and the library then compiles it when it is *loaded*, through
the same Python hook: a runtime-only deployment cannot load it.

So a library that loads with TVM's runtime alone is made here: the kernels' source is compiled
with nvcc (SASS for the device's ``sm_XX`` plus its PTX, so newer GPUs can JIT it in the driver),
and the CUDA module's entry in the library's embedded module blob (``__tvm_ffi__library_bin``) is
rewritten from ``fmt "cuda" + source`` to ``fmt "fatbin" + fatbin`` before it is linked
(``export_library(fpack_imports=...)``, the blob turned into an object file by TVM's
``codegen.codegen_blob``). Nothing is registered globally. On load, TVM's CUDA module takes a
fatbin as it is (``cuModuleLoadData`` on first use); only ``fmt "cuda"`` needs the compile hook.
Where the plugin does load at build time, the entry holds what TVM's hook compiled (tagged
``"cubin"``) and the fatbin replaces that the same way.

``QFA_CUDA_KERNELS`` picks the mode: ``auto`` (default: fatbin when nvcc is on PATH, else TVM's own
output with a one-line warning), ``fatbin`` (nvcc required: an error without it), ``source`` (TVM's
own output: source compiled at load, on a build machine without a GPU driver).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from qfa_deploy.deploy._text import one_line
from qfa_deploy.errors import QfaError

CUDA_SOURCE_NAME = "model.cu"  # beside a CUDA library: the kernels' source, for inspection and offline nvcc

__all__ = [
    "CUDA_SOURCE_NAME", "KERNELS_ENV", "KERNEL_MODES", "CudaKernels", "check_cuda_request", "compile_cuda_offline",
    "compile_kernels", "embedded_cuda_modules", "fatbin_entries", "kernel_mode", "library_blob",
    "no_nvcc_message", "prepare_cuda_kernels",
]

KERNELS_ENV = "QFA_CUDA_KERNELS"
KERNEL_MODES = ("auto", "fatbin", "source")
_FATBIN_MAGIC = 0xBA55ED50
_BLOB_SYMBOL = b"__tvm_ffi__library_bin"


def no_nvcc_message(required: bool = False, library_format: str = "cuda") -> str:
    """The one line said when a CUDA library cannot be given nvcc-compiled kernels (``required``:
    the fatbin mode was asked for, so nothing is written; ``library_format``: what the library got)."""
    if required:
        return (f"{KERNELS_ENV}=fatbin needs nvcc (the CUDA toolkit's compiler) on PATH, and there is none: "
                f"install the CUDA toolkit, or set {KERNELS_ENV}=source to ship CUDA source compiled at load")
    if library_format == "cuda":
        carries = ("CUDA source, compiled when the GPU machine loads it (needs TVM's Python package and "
                   "NVRTC there)")
    else:  # TVM's CUDA runtime loaded here and compiled the kernels itself (its hook, this GPU's arch)
        carries = f"the {library_format} TVM's compile hook made while building"
    return (f"nvcc (the CUDA toolkit's compiler) is not on PATH: model.so carries {carries}; put the CUDA "
            f"toolkit's nvcc on PATH to embed compiled kernels, or set {KERNELS_ENV}=source to ship this")


def kernel_mode(requested: str | None = None) -> str:
    """``requested``, else ``$QFA_CUDA_KERNELS``, else "auto"; checked against KERNEL_MODES."""
    mode = requested if requested is not None else os.environ.get(KERNELS_ENV) or "auto"
    if mode not in KERNEL_MODES:
        raise QfaError(f"{KERNELS_ENV}={mode!r}: use one of {', '.join(KERNEL_MODES)}")
    return mode


def check_cuda_request(mode: str | None = None) -> str:
    """The kernel mode for a CUDA build, checked before any work: QfaError for a bad mode or for
    "fatbin" without nvcc."""
    mode = kernel_mode(mode)
    if mode == "fatbin" and shutil.which("nvcc") is None:
        raise QfaError(no_nvcc_message(required=True))
    return mode


def _check_arch(arch: str) -> str:
    """The part of ``sm_XX`` (``sm_90a``) after ``sm_``; QfaError for anything else."""
    if not isinstance(arch, str) or not re.fullmatch(r"sm_\d+[af]?", arch):
        raise QfaError(f"arch must look like sm_80, not {arch!r}")
    return arch[3:]


def compile_kernels(source: str, arch: str = "sm_80") -> bytes:
    """nvcc ``source`` into a fatbin with SASS for ``arch`` and its PTX (TVM's own nvcc flags)."""
    import tvm
    from tvm.support import nvcc

    digits = _check_arch(arch)
    if shutil.which("nvcc") is None:
        raise QfaError("nvcc is not on PATH (the CUDA toolkit's compiler)")
    gencode = ["-gencode", f"arch=compute_{digits},code=sm_{digits}",
               "-gencode", f"arch=compute_{digits},code=compute_{digits}"]
    try:
        with tvm.target.Target({"kind": "cuda", "arch": arch}):  # nvcc.compile_cuda reads the current target
            binary = nvcc.compile_cuda(source, target_format="fatbin", arch=gencode, compiler="nvcc")
    except Exception as exc:
        raise QfaError(f"nvcc cannot compile the CUDA kernels for {arch}: {one_line(exc)}") from None
    return bytes(binary)


@dataclass
class CudaKernels:
    """What ``compile_artifact`` embeds for a CUDA device: the source and, in fatbin mode, its fatbin."""

    source: str
    arch: str
    mode: str  # "fatbin" or "source"
    fatbin: bytes | None = None
    nvcc_seconds: float | None = None
    nvcc_missing: bool = False  # "auto" without nvcc

    def pack_imports(self):
        """``export_library``'s ``fpack_imports`` embedding the fatbin, or None to keep TVM's packing."""
        if self.fatbin is None:
            return None
        return lambda mod, is_system_lib, prefix, workspace_dir: _pack_with_fatbin(
            mod, is_system_lib, prefix, workspace_dir, self.source, self.fatbin)

    def describe(self, lib_path: Path) -> tuple[dict, str | None]:
        """What the built library carries, read back from it (format "fatbin", "cuda" = source, or
        what TVM's own hook made), for meta.json; and the one-line note when nvcc was missing."""
        modules = embedded_cuda_modules(lib_path)
        if len(modules) != 1:
            raise QfaError(f"{lib_path}: expected one CUDA module, found {len(modules)}")
        info = modules[0]
        out = {"format": info["format"], "arch": self.arch, "code_bytes": info["code_bytes"]}
        if "images" in info:
            out["images"] = [f"{e['kind']} {e['arch']}" for e in info["images"]]
        if self.fatbin is not None:
            if info["format"] != "fatbin" or info["code_bytes"] != len(self.fatbin):
                raise QfaError(f"{lib_path}: the fatbin was not embedded (found {info['format']})")
            out["nvcc_seconds"] = round(self.nvcc_seconds, 3)
        note = no_nvcc_message(library_format=info["format"]) if self.nvcc_missing else None
        return out, note


def prepare_cuda_kernels(executable, arch: str, mode: str | None = None) -> CudaKernels:
    """The CUDA kernels of a ``tvm.compile`` result, nvcc-compiled unless the mode says otherwise.

    Raises:
        QfaError: mode "fatbin" without nvcc, nvcc failing, or a build with no CUDA module.
    """
    mode = kernel_mode(mode)
    _check_arch(arch)
    modules = [m for m in _walk(executable.mod) if m.kind == "cuda"]
    if len(modules) != 1:
        raise QfaError(f"expected one CUDA module in the build, found {len(modules)}")
    source = modules[0].inspect_source("cuda")
    kernels = CudaKernels(source=source, arch=arch, mode="source")
    if mode == "source":
        return kernels
    if shutil.which("nvcc") is None:
        if mode == "fatbin":
            raise QfaError(no_nvcc_message(required=True))
        kernels.nvcc_missing = True
        return kernels
    start = time.perf_counter()
    kernels.fatbin = compile_kernels(source, arch)
    kernels.nvcc_seconds = time.perf_counter() - start
    kernels.mode = "fatbin"
    return kernels


def _walk(module):
    yield module
    for sub in module.imports:
        yield from _walk(sub)


# ---- the embedded module blob -----------------------------------------------------------------
# tvm-ffi's layout (ProcessLibraryBin): <nbytes u64> <indptr vec<u64>> <child_indices vec<u64>>
# then per module <kind str> [<bytes>] ("_lib", the library itself, has no bytes); str, bytes and
# vec are u64-length-prefixed, little-endian. A CUDA module's bytes are <fmt str> <fmap> <code bytes>.


def _u64(data: bytes, offset: int) -> tuple[int, int]:
    if offset + 8 > len(data):
        raise ValueError("truncated")
    return struct.unpack_from("<Q", data, offset)[0], offset + 8


def _take(data: bytes, offset: int) -> tuple[bytes, int]:
    size, offset = _u64(data, offset)
    if offset + size > len(data):
        raise ValueError("truncated")
    return data[offset:offset + size], offset + size


def _blob_entries(blob: bytes) -> tuple[bytes, list[tuple[bytes, bytes | None]]]:
    """The blob's import tree (raw) and its (kind, bytes) entries; ValueError if malformed."""
    nbytes, offset = _u64(blob, 0)
    if nbytes != len(blob) - 8:
        raise ValueError(f"header says {nbytes} bytes, blob has {len(blob) - 8}")
    count, offset = _u64(blob, offset)
    indptr = struct.unpack_from(f"<{count}Q", blob, offset)
    offset += 8 * count
    count, offset = _u64(blob, offset)
    offset += 8 * count
    tree = blob[8:offset]
    entries = []
    for _ in range(len(indptr) - 1):
        kind, offset = _take(blob, offset)
        body = None
        if kind != b"_lib":
            body, offset = _take(blob, offset)
        entries.append((kind, body))
    if offset != len(blob):
        raise ValueError(f"{len(blob) - offset} bytes after the last module")
    return tree, entries


# how each format's code starts; TVM's runtime tags whatever its compile hook returns "cubin" unless
# it is PTX text (so an nvcc fatbin can be tagged "cubin")
_BINARY_STARTS = (_FATBIN_MAGIC.to_bytes(4, "little"), b"\x7fELF")
_CODE_STARTS = {"fatbin": _BINARY_STARTS, "cubin": _BINARY_STARTS, "ptx": (b"/",)}


def _cuda_parts(body: bytes, code: bytes | None = None) -> tuple[str, bytes, bytes]:
    """A CUDA module's serialized bytes as (fmt, fmap bytes, code); ``code``: the code expected."""
    fmt, offset = _take(body, 0)
    fmt = fmt.decode()
    if code is not None:
        tail = struct.pack("<Q", len(code)) + code
        if len(body) - len(tail) >= offset and body.endswith(tail):
            return fmt, body[offset:len(body) - len(tail)], code
        raise ValueError(f"its {fmt} code is not the expected one")
    # the code is last, <u64 size><code>: the first position whose size field reaches the end
    # exactly and whose code starts as its format's does
    starts = _CODE_STARTS.get(fmt, (b"",))
    for start in range(offset, len(body) - 7):
        size = struct.unpack_from("<Q", body, start)[0]
        if start + 8 + size == len(body) and body[start + 8:].startswith(starts):
            return fmt, body[offset:start], body[start + 8:]
    raise ValueError(f"no {fmt} code field")


def _with_fatbin(blob: bytes, source: str, fatbin: bytes) -> bytes:
    """``blob`` with its one CUDA module's code replaced by ``fatbin`` (fmt "fatbin"). The module
    holds ``source`` (fmt "cuda": TVM's fallback module, no CUDA runtime at build time) or, on a
    build machine with a GPU driver, what TVM's runtime compiled at once (NVRTC cubin by default)."""
    try:
        tree, entries = _blob_entries(blob)
        out = bytearray(tree)
        swapped = 0
        for kind, body in entries:
            out += struct.pack("<Q", len(kind)) + kind
            if body is None:
                continue
            if kind == b"cuda":
                fmt = _take(body, 0)[0]
                _fmt, fmap, _code = _cuda_parts(body, source.encode() if fmt == b"cuda" else None)
                body = struct.pack("<Q", 6) + b"fatbin" + fmap + struct.pack("<Q", len(fatbin)) + fatbin
                swapped += 1
            out += struct.pack("<Q", len(body)) + body
    except (ValueError, struct.error) as exc:
        raise QfaError(f"cannot embed the fatbin: TVM {_tvm_version()}'s module blob is not as expected "
                       f"({exc})") from None
    if swapped != 1:
        raise QfaError(f"expected one CUDA module in TVM's module blob, found {swapped}")
    return struct.pack("<Q", len(out)) + bytes(out)


def _tvm_version() -> str:
    import tvm

    return tvm.__version__


def _pack_with_fatbin(mod, is_system_lib, prefix, workspace_dir, source: str, fatbin: bytes) -> str:
    """``fpack_imports``: TVM's module blob with the CUDA entry's source swapped for the fatbin,
    as an object file made by TVM's own ``codegen.codegen_blob`` (what export_library does)."""
    import tvm_ffi
    from tvm.runtime import _ffi_api

    blob = _ffi_api.ModulePackImportsToTensor(mod).numpy().tobytes()
    patched = _with_fatbin(blob, source, fatbin)
    hosts = [m for m in mod._collect_dso_modules() if m.kind == "llvm"]
    if len(hosts) != 1:
        raise QfaError(f"expected one LLVM host module, found {len(hosts)}")
    llvm_target = hosts[0].get_function("_get_target_string")()
    codegen_blob = tvm_ffi.get_global_func("codegen.codegen_blob")
    path = os.path.join(workspace_dir, f"{prefix}devc.o")
    codegen_blob(patched, is_system_lib, llvm_target, prefix).write_to_file(path)
    return path


# ---- reading a built library ------------------------------------------------------------------


def library_blob(lib_path: Path) -> bytes:
    """The ``__tvm_ffi__library_bin`` bytes of a 64-bit little-endian ELF library, read from the file."""
    data = Path(lib_path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise QfaError(f"{lib_path}: not a 64-bit little-endian ELF library")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    for _name, sh_type, _flags, _addr, sym_off, sym_size, link, _info, _align, entsize in sections:
        if sh_type not in (2, 11):  # SHT_SYMTAB, SHT_DYNSYM
            continue
        str_off = sections[link][4]
        for pos in range(sym_off, sym_off + sym_size, entsize):
            st_name, _st_info, _other, st_shndx, st_value, _st_size = struct.unpack_from("<IBBHQQ", data, pos)
            end = data.index(b"\0", str_off + st_name)
            if data[str_off + st_name:end] != _BLOB_SYMBOL or st_shndx == 0:
                continue
            sec = sections[st_shndx]
            start = sec[4] + st_value - sec[3]  # file offset of the symbol's address in its section
            nbytes = struct.unpack_from("<Q", data, start)[0]
            return data[start:start + 8 + nbytes]
    raise QfaError(f"{lib_path}: no {_BLOB_SYMBOL.decode()} symbol (no embedded modules)")


def embedded_cuda_modules(lib_path: Path) -> list[dict]:
    """The CUDA modules embedded in a built library: format ("fatbin", "cuda", ...), code size,
    kernel-image entries (for a fatbin) and, for source, whether it is CUDA C."""
    try:
        _tree, entries = _blob_entries(library_blob(lib_path))
        modules = []
        for kind, body in entries:
            if kind != b"cuda":
                continue
            fmt, _fmap, code = _cuda_parts(body)
            info = {"format": fmt, "code_bytes": len(code)}
            if fmt == "fatbin":
                info["images"] = fatbin_entries(code)
            modules.append(info)
    except (ValueError, struct.error) as exc:
        raise QfaError(f"{lib_path}: cannot read its module blob: {exc}") from None
    return modules


def fatbin_entries(data: bytes) -> list[dict]:
    """The images of a fatbin: [{"kind": "sass"|"ptx", "arch": "sm_80"}, ...].

    Layout (read from nvcc 13's output): header <magic u32> <version u16> <header size u16>
    <payload size u64>; each entry <kind u16: 1 ptx, 2 elf> <version u16> <header size u32>
    <payload size u64> ... <sm u32 at +28>. An ELF (SASS) image's e_flags repeat the sm in bits 8-15.
    """
    if len(data) < 16 or struct.unpack_from("<I", data, 0)[0] != _FATBIN_MAGIC:
        raise ValueError("not a fatbin")
    _magic, _version, header, payload = struct.unpack_from("<IHHQ", data, 0)
    entries, offset, end = [], header, header + payload
    while offset < end:
        kind, _v, entry_header, size = struct.unpack_from("<HHIQ", data, offset)
        sm = struct.unpack_from("<I", data, offset + 28)[0]
        image = data[offset + entry_header:offset + entry_header + size]
        if kind == 2:
            if image[:4] != b"\x7fELF":
                raise ValueError("SASS image is not an ELF")
            elf_sm = (struct.unpack_from("<I", image, 48)[0] >> 8) & 0xFF
            if elf_sm != sm:
                raise ValueError(f"SASS image header says sm_{sm}, its ELF sm_{elf_sm}")
        entries.append({"kind": {1: "ptx", 2: "sass"}.get(kind, f"kind-{kind}"), "arch": f"sm_{sm}"})
        offset += entry_header + size
    return entries


def compile_cuda_offline(artifact_dir: Path, arch: str = "sm_80", target_format: str = "fatbin") -> Path:
    """nvcc ``artifact_dir/model.cu`` into ``artifact_dir/model.<target_format>``; returns its path.

    (``compile_artifact`` already embeds a fatbin in the library when nvcc is present; this
    separate file is for inspecting the kernels or for a library exported with source.)
    """
    import tvm
    from tvm.support import nvcc

    source = Path(artifact_dir) / CUDA_SOURCE_NAME
    if not source.is_file():
        raise QfaError(f"{artifact_dir} has no {CUDA_SOURCE_NAME} (compile it for a CUDA device first)")
    if shutil.which("nvcc") is None:
        raise QfaError("nvcc is not installed (the CUDA toolkit's compiler)")
    digits = _check_arch(arch)
    out = source.with_suffix(f".{target_format}")
    gencode = ["-gencode", f"arch=compute_{digits},code=sm_{digits}"]
    try:
        with tvm.target.Target({"kind": "cuda", "arch": arch}):  # nvcc.compile_cuda reads the current target
            binary = nvcc.compile_cuda(source.read_text(), target_format=target_format, arch=gencode,
                                       compiler="nvcc")
    except Exception as exc:
        raise QfaError(f"nvcc cannot compile {source}: {one_line(exc)}") from None
    out.write_bytes(bytes(binary))
    return out
