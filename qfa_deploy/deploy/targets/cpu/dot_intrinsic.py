"""One 4-byte dot-product instruction as a TIR tensor intrinsic: C[lanes] int32 += A[4] . B[lanes, 4].

Each int32 lane of C gets the sum of the four products of A's bytes (the same 4 codes, broadcast to
every lane) with its own 4 weight bytes: x86's ``vpdpbusd`` (A uint8, B int8) and aarch64's ``sdot``
(both int8) have this shape. A target registers the intrinsics it uses when its schedule runs
(``register_dot_intrinsic``), under names of its own, once per process.
"""

from __future__ import annotations

__all__ = ["register_dot_intrinsic"]


def register_dot_intrinsic(name: str, llvm_name: str, lanes: int, code_dtype: str) -> str:
    """Register ``name`` (unless this process already has it) as ``lanes`` int32 lanes += a word of 4
    ``code_dtype`` bytes . [lanes, 4] int8 by LLVM's ``llvm_name`` (accumulator, broadcast codes,
    weights); returns ``name``."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    if TensorIntrin.get(name, allow_missing=True) is not None:
        return name
    acc_type, code_type, word_type = f"int32x{lanes}", f"{code_dtype}x{4 * lanes}", f"int8x{4 * lanes}"

    @T.prim_func(s_tir=True)
    def semantics(
        A: T.Buffer((4,), code_dtype, offset_factor=1),
        B: T.Buffer((lanes, 4), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            for i, k in T.grid(lanes, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def instruction(
        A: T.Buffer((4,), code_dtype, offset_factor=1),
        B: T.Buffer((lanes, 4), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            # the 4 codes as one word, to every lane (inline: a named scalar becomes a buffer that
            # TVM 0.27 allocates from the workspace pool on every call)
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm_name),
                C.vload([0], dtype=acc_type),
                T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], f"{code_dtype}x4"), dtype="int32"), lanes),
                              dtype=code_type),
                B.vload([0, 0], dtype=word_type),
                dtype=acc_type,
            )

    TensorIntrin.register(name, semantics, instruction)
    return name


def register_lane_dot_intrinsic(name: str, llvm_name: str, lanes: int, code_dtype: str) -> str:
    """Register ``name`` as C[lanes] int32 += the dot products of two words of 4 ``code_dtype`` bytes (A[8],
    one load) with their own weights B[2, lanes, 4] int8: per 4 lanes and word one ``llvm_name`` taking the
    word as a lane of the loaded vector (aarch64's indexed ``sdot v.4s, w.16b, a.4b[j]``), so that the
    codes need no broadcast (``ld1r`` takes a vector pipe on the Cortex-A76, and its load pipe too)."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    if TensorIntrin.get(name, allow_missing=True) is not None:
        return name

    @T.prim_func(s_tir=True)
    def semantics(
        A: T.Buffer((8,), code_dtype, offset_factor=1),
        B: T.Buffer((2, lanes, 4), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:8], B[0:2, 0:lanes, 0:4])
            T.writes(C[0:lanes])
            for i, j, k in T.grid(lanes, 2, 4):
                with T.sblock("update"):
                    vi, vj, vk = T.axis.remap("SRR", [i, j, k])
                    C[vi] = C[vi] + T.cast(A[vj * 4 + vk], "int32") * T.cast(B[vj, vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def instruction(
        A: T.Buffer((8,), code_dtype, offset_factor=1),
        B: T.Buffer((2, lanes, 4), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:8], B[0:2, 0:lanes, 0:4])
            T.writes(C[0:lanes])
            # word j of the codes in every int32 lane, a lane of the one vector loaded (no broadcast load)
            for r in T.unroll(lanes // 4):
                C[T.ramp(r * 4, 1, 4)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(llvm_name),
                    T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id(llvm_name), C.vload([r * 4], dtype="int32x4"),
                        B.vload([0, r * 4, 0], dtype="int8x16"),
                        T.reinterpret(T.Shuffle([T.reinterpret(A.vload([0], code_dtype + "x8"), dtype="int32x2")] * 2,
                                                [0, 0, 0, 0]), dtype="int8x16"),
                        dtype="int32x4"),
                    B.vload([1, r * 4, 0], dtype="int8x16"),
                    T.reinterpret(T.Shuffle([T.reinterpret(A.vload([0], code_dtype + "x8"), dtype="int32x2")] * 2,
                                            [1, 1, 1, 1]), dtype="int8x16"),
                    dtype="int32x4",
                )

    TensorIntrin.register(name, semantics, instruction)
    return name
