"""Could packed low-bit kernels beat the 8-bit containers on this x86 CPU? The inner loops, measured.

The artifact's 1x1 convs run ``vpdpbusd`` on byte containers at every bit width (``tiled-vnni``),
so a W2A2 subnet costs what a W4A4 one does. This bench builds ``lowbit_kernels.c`` (the candidate
kernels: bit-serial popcounts on AVX512-VPOPCNTDQ, and the VNNI kernel reading weights packed 2 or 4
a byte) with the host's compiler, checks that each gives the exact int32 sums of numpy, and times
them against the 8-bit VNNI kernel on the same 1x1 convs (w1.2 @224 shapes), in interleaved rounds of
one process on one pinned core. It prints each kernel's time as a ratio to VNNI; the bit-serial one
also with the packing of the layer's codes into bit planes that it needs first. Each figure is the
minimum (or ``--statistic median``) over rounds x windows of ~1 ms.

    python bench/lowbit_kernels.py [--cpu 0] [--rounds 7] [--windows 5] [--json docs/results/lowbit_kernels_x86.json]

Needs gcc (or $CC) and a CPU with AVX512-VNNI, AVX512-VPOPCNTDQ and AVX512-BW.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).with_name("lowbit_kernels.c")
FLAGS = ("avx512_vnni", "avx512_vpopcntdq", "avx512bw")
KERNELS = ("vnni", "vnni_w4pack", "vnni_w2pack", "pack_planes",
           "bitserial_w1a1", "bitserial_w2a2", "bitserial_w3a2", "bitserial_w3a3", "bitserial_w4a4")
# (pixels, input channels, output channels): 1x1 convs of qfa-mbv3-w1.2 subnets at 224 px
SHAPES = ((3136, 48, 144), (784, 192, 48), (196, 96, 576), (196, 576, 136), (49, 1152, 192), (49, 192, 1152))
BITS = ((1, 1), (2, 2), (3, 2), (3, 3), (4, 4))  # (weight bits, code bits)
# each measurement: as many calls as fill ~1 ms, shorter than a time slice, so that on a shared core
# most windows run undisturbed and their minimum is the kernel's time
TARGET_NS = 1_000_000
# padding: pixels to the VNNI tile's 6 and the bit-serial tiles' up to 4, outputs to a VNNI tile
PIXELS, VNNI_OUTPUTS, BITSERIAL_CHANNELS = 12, 32, 512


def _up(n: int, m: int) -> int:
    return -(-n // m) * m


def build(workdir: Path) -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        sys.exit("lowbit_kernels: no C compiler (gcc or $CC)")
    lib = workdir / "lowbit_kernels.so"
    subprocess.run([cc, "-O3", "-march=native", "-shared", "-fPIC", "-o", str(lib), str(SOURCE)], check=True)
    dll = ctypes.CDLL(str(lib))
    dll.time_calls.restype = ctypes.c_int64
    dll.time_calls.argtypes = [ctypes.c_int, ctypes.c_int] + [ctypes.c_void_p] * 4 + [ctypes.c_int] * 4
    return dll


class Conv:
    """One 1x1 conv's operands in every kernel's layout, its exact sums, and a timer per kernel."""

    def __init__(self, dll, shape, w_bits: int, a_bits: int, rng):
        self.dll, self.shape, self.w_bits, self.a_bits = dll, shape, w_bits, a_bits
        pixels, channels, outputs = shape
        self.P, self.O = _up(pixels, PIXELS), _up(outputs, VNNI_OUTPUTS)
        # each kernel's channel padding (zero channels add nothing): 16 for the VNNI kernels (4 steps of
        # 4 a packed byte), a zmm of bit planes (512) for the bit-serial one
        self.K = {"dense": _up(channels, 16), "planes": _up(channels, BITSERIAL_CHANNELS)}
        codes = np.zeros((self.P, self.K["planes"]), np.uint8)
        codes[:pixels, :channels] = rng.integers(0, 1 << a_bits, (pixels, channels))
        weights = np.zeros((self.O, self.K["planes"]), np.int8)
        weights[:outputs, :channels] = rng.integers(-(1 << (w_bits - 1)), 1 << (w_bits - 1), (outputs, channels))
        self.codes = {"planes": codes, "dense": np.ascontiguousarray(codes[:, : self.K["dense"]])}
        self.expected = codes.astype(np.int64) @ weights.astype(np.int64).T
        self.out = np.zeros((self.P, self.O), np.int32)
        self.planes = np.zeros(self.P * a_bits * self.K["planes"] // 64, np.uint64)  # pack_planes writes them
        self.sums = np.zeros(self.P, np.int32)  # the packed-weight kernels' code sums
        dense = weights[:, : self.K["dense"]]
        blocked = dense.reshape(self.O // 16, 16, self.K["dense"] // 4, 4).transpose(0, 2, 1, 3)  # [O/16][K/4][16][4]
        self.layouts = {"vnni": np.ascontiguousarray(blocked), "bitserial": _planes(weights, w_bits)}
        for bits in (4, 2):
            if w_bits <= bits:
                self.layouts[f"vnni_w{bits}pack"] = _packed(blocked, bits)

    def kernels(self) -> list[str]:
        names = ["vnni"] + [k for k in ("vnni_w4pack", "vnni_w2pack") if k in self.layouts]
        bitserial = f"bitserial_w{self.w_bits}a{self.a_bits}"
        return names + (["pack_planes", bitserial] if bitserial in KERNELS else [])

    def _call(self, name: str, reps: int) -> int:
        """Nanoseconds for ``reps`` calls. The VNNI kernels read the codes and their weight layout;
        pack_planes writes the code planes, which the bit-serial kernel reads."""
        planes = name == "pack_planes" or name.startswith("bitserial")
        k = self.K["planes" if planes else "dense"]
        if name == "pack_planes":
            codes, weights = self.codes["planes"], None
        elif name.startswith("bitserial"):
            codes, weights = self.planes, self.layouts["bitserial"]
        else:
            codes, weights = self.codes["dense"], self.layouts[name]
        return self.dll.time_calls(KERNELS.index(name), reps, codes.ctypes.data,
                                   None if weights is None else weights.ctypes.data, self.out.ctypes.data,
                                   (self.planes if name == "pack_planes" else self.sums).ctypes.data,
                                   self.P, k, self.O, self.a_bits)

    def check(self) -> None:
        """Every kernel's int32 sums equal numpy's (the bit planes packed by the C code first)."""
        self._call("pack_planes", 1)
        qwords = self.K["planes"] // 64
        planes = self.planes.reshape(self.P, self.a_bits, qwords)
        if not np.array_equal(planes, _planes(self.codes["planes"], self.a_bits)):
            sys.exit(f"lowbit_kernels: pack_planes is not exact on {self.shape} A{self.a_bits}")
        for name in self.kernels():
            if name == "pack_planes":
                continue
            self.out[:] = 0
            self._call(name, 1)
            if not np.array_equal(self.out.astype(np.int64), self.expected):
                sys.exit(f"lowbit_kernels: {name} is not exact on {self.shape} W{self.w_bits}A{self.a_bits}")

    def reps(self, name: str) -> int:
        once = max(self._call(name, 1), 1)
        return max(1, TARGET_NS // once)

    def time(self, name: str, reps: int) -> float:
        """Nanoseconds per call (pack_planes first, so the bit-serial kernel reads fresh planes)."""
        if name.startswith("bitserial"):
            self._call("pack_planes", 1)
        return self._call(name, reps) / reps


def _packed(blocked: np.ndarray, bits: int) -> np.ndarray:
    """[O/16][K/4][16][4] int8 -> [O/16][K/(4 per_byte)][64] uint8: per_byte offset-binary fields a byte,
    field f of a group's byte t = weight t of its k4 step f."""
    per_byte = 8 // bits
    o16, k4s = blocked.shape[:2]
    offset = (blocked.astype(np.int16) + (1 << (bits - 1))).astype(np.uint8).reshape(o16, k4s // per_byte, per_byte, 64)
    return np.ascontiguousarray(sum(offset[:, :, f, :] << np.uint8(f * bits) for f in range(per_byte)).astype(np.uint8))


def _planes(values: np.ndarray, bits: int) -> np.ndarray:
    """[R][K] integers -> [R][bits][K/64] uint64: bit c of qword q of plane j = bit j of value 64 q + c
    (two's complement for signed values)."""
    twos = values.astype(np.int16) & ((1 << bits) - 1)
    planes = [np.packbits(((twos >> j) & 1).astype(np.uint8), axis=1, bitorder="little") for j in range(bits)]
    return np.ascontiguousarray(np.stack(planes, axis=1)).view(np.uint64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", type=int, default=0, help="the core to pin to (default 0)")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    ap.add_argument("--windows", type=int, default=5, help="~1 ms windows per kernel and round")
    ap.add_argument("--statistic", choices=("min", "median"), default="min",
                    help="over all windows (default min: robust to a shared core's other work)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    missing = [f for f in FLAGS if f not in cpuinfo.split()]
    if platform.machine() != "x86_64" or missing:
        sys.exit(f"lowbit_kernels: needs an x86-64 CPU with {', '.join(FLAGS)} (missing: {', '.join(missing) or '-'})")
    os.sched_setaffinity(0, {args.cpu})
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        dll = build(Path(tmp))
        convs = [Conv(dll, shape, w, a, rng) for shape in SHAPES for w, a in BITS]
        for conv in convs:
            conv.check()
        print(f"all kernels exact on {len(convs)} convs ({len(SHAPES)} shapes x {len(BITS)} bit pairs)")
        reps = {(i, name): conv.reps(name) for i, conv in enumerate(convs) for name in conv.kernels()}
        samples: dict[tuple[int, str], list[float]] = {key: [] for key in reps}
        for _ in range(args.rounds):
            for (i, name), n in reps.items():
                samples[(i, name)] += [convs[i].time(name, n) for _ in range(args.windows)]
    rows = []
    for i, conv in enumerate(convs):
        pick = min if args.statistic == "min" else statistics.median
        ns = {name: pick(samples[(i, name)]) for name in conv.kernels()}
        row = {"pixels": conv.shape[0], "in_channels": conv.shape[1], "out_channels": conv.shape[2],
               "w_bits": conv.w_bits, "a_bits": conv.a_bits, "ns": {k: round(v, 1) for k, v in ns.items()}}
        row["ratio_to_vnni"] = {k: round(v / ns["vnni"], 3) for k, v in ns.items() if k != "vnni"}
        bitserial = f"bitserial_w{conv.w_bits}a{conv.a_bits}"
        if bitserial in ns:
            row["ratio_to_vnni"]["bitserial_with_packing"] = round((ns[bitserial] + ns["pack_planes"]) / ns["vnni"], 3)
        rows.append(row)
    _print(rows, args.statistic)
    if args.json:
        result = {"bench": "lowbit_kernels", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpu": args.cpu,
                  "rounds": args.rounds, "windows": args.windows, "host_cpu": _cpu_name(cpuinfo),
                  "statistic": f"{args.statistic} ns per call over rounds x windows of ~1 ms",
                  "padding": {"pixels": PIXELS, "out_channels": VNNI_OUTPUTS, "in_channels": BITSERIAL_CHANNELS},
                  "rows": rows}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")


def _cpu_name(cpuinfo: str) -> str:
    return next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")


def _print(rows: list[dict], statistic: str) -> None:
    print(f"ratio to the 8-bit VNNI kernel ({statistic} ns per call; < 1 is faster)")
    print(f"{'conv (pixels, in, out)':<24} {'bits':<6} {'vnni ns':>9} {'w4pack':>7} {'w2pack':>7} "
          f"{'bitserial':>9} {'+packing':>9}")
    for row in rows:
        r = row["ratio_to_vnni"]
        bits = f"W{row['w_bits']}A{row['a_bits']}"
        serial = r.get(f"bitserial_w{row['w_bits']}a{row['a_bits']}")

        def cell(value, width):
            return f"{value:>{width}.3f}" if value is not None else f"{'-':>{width}}"

        conv = str((row["pixels"], row["in_channels"], row["out_channels"]))
        print(f"{conv:<24} {bits:<6} {row['ns']['vnni']:>9.0f} "
              f"{cell(r.get('vnni_w4pack'), 7)} {cell(r.get('vnni_w2pack'), 7)} {cell(serial, 9)} "
              f"{cell(r.get('bitserial_with_packing'), 9)}")


if __name__ == "__main__":
    main()
