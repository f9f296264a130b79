"""Integer convs read the uint8 codes: 1x1 convs as uint8 x int8 dot products (x86 AVX512-VNNI).

The exported graph computes every quantized conv as ``Conv(q - Z, w_int)`` on float tensors holding
integers, whose every partial sum is an integer below 2^24 (``qfa_deploy.nn.integer_conv``), so the
float conv is exact. For a 1x1 conv the same sum can be taken on the integers themselves:

    acc[o] = sum_c q[c] * w[o, c] - comp[o],    comp[o] = sum_c Z[c] * w[o, c]

with ``q`` the uint8 codes, ``w`` int8 and int32 accumulation, which VNNI's ``vpdpbusd`` does 64
products at a time (four times the multiply-adds of a float FMA). The result is converted to float
and the graph goes on unchanged, so the outputs are bit-identical to the float build.

``lower_integer_convs(mod)`` rewrites, in the imported Relax module, each
``conv2d(dequantize(q, 1, Z), dequantize(W, 1, 0))``:

- 1x1, stride 1, one group: one ``call_tir`` of three stages: pack the codes to ``[C/4, H, W, 4]``
  (four channels of a pixel side by side, the operand layout of ``vpdpbusd``), the packed dot
  product into int32 tiles of 16 output channels, or 8 where O is not a multiple of 16 (weights
  pre-packed at compile time to ``[O/16, C/4, 16, 4]``), and the conversion back to an NCHW float
  tensor, onto which the conv's epilogue then fuses. ``schedule_int8_pointwise`` tensorizes the dot
  product on VNNI.
- depthwise (channels a multiple of 8): the same float sums, but dequantizing the codes in its own
  padding stage, so that the tensor between the producer and the conv is uint8 instead of float (a
  quarter of the bytes), into planes of 16 (or 8) channels side by side: every tap is then one
  contiguous vector load and FMA whatever the stride or the width (NCHW rows of 7 or 14 pixels,
  read with stride 2, wasted most of a vector). ``schedule_depthwise_blocked`` tiles it.

With every reader of a dequantized tensor rewritten, the dequantize is dead and the producing
function ends at its quantize. After fusion, ``keep_codes_blocked`` hands the codes from one integer
conv to the next in the channel-blocked layout both compute in.
"""

from __future__ import annotations

import functools
import logging

import numpy as np

__all__ = [
    "DEPTHWISE_BLOCKS", "INT8_BLOCKS", "lower_integer_convs", "schedule_depthwise_blocked", "schedule_int8_pointwise",
]

log = logging.getLogger(__name__)

INT8_BLOCKS = ("int8_pack", "int8_dot", "int8_out")  # the stages' block names, found again by the schedule
DEPTHWISE_BLOCKS = ("dw_pad", "dw_conv", "dw_out")
_LANES = (16, 8)  # int32 accumulators per vpdpbusd (a zmm register, a ymm one): output channels per tile
_GROUP = 4  # uint8 x int8 products summed into each accumulator lane
_DW_COLS = 14  # output pixels per depthwise tile: one accumulator vector each


def lower_integer_convs(mod):
    """``mod`` (an imported, not yet legalized Relax module) with its integer convs reading the codes:
    1x1 convs as int8 dot products, depthwise convs dequantizing inside their padding stage."""
    from tvm import ir, relax

    from qfa_deploy.deploy.conv_rewrite import rewrite_convs

    dequantize = ir.Op.get("relax.dequantize")

    def rewrite(builder, call, lookup_binding):
        operands = _integer_operands(call, lookup_binding, dequantize)
        if operands is None:
            return None
        codes, weight, zero_point = operands
        attrs = call.attrs
        strides, padding = [int(v) for v in attrs.strides], [int(v) for v in attrs.padding]
        if int(attrs.groups) == 1 and weight.shape[2:] == (1, 1) and strides == [1, 1] and not any(padding):
            packed, comp = _pack_weight(weight[:, :, 0, 0], zero_point, _tile_lanes(int(weight.shape[0])))
            return "pointwise", builder.call_te(
                _pointwise_int8, codes, relax.const(packed), relax.const(comp), int(weight.shape[0]),
                primfunc_name_hint="conv2d_int8",
            )
        if (int(attrs.groups) == weight.shape[0] == codes.ty.shape[1] and weight.shape[1] == 1
                and weight.shape[0] % 8 == 0):
            # depthwise: no channel sum for VNNI to take, but reading the uint8 codes (not their float
            # copy) lets the producer write a quarter of the bytes
            lanes = _depthwise_lanes(int(weight.shape[0]))
            return "depthwise", builder.call_te(
                _depthwise_from_codes, codes, relax.const(_pack_depthwise_weight(weight, lanes)),
                relax.const(zero_point.astype(np.float32)), strides, padding,
                primfunc_name_hint="conv2d_codes",
            )
        return None

    mod, counts = rewrite_convs(mod, rewrite)
    log.info("integer convs: %d 1x1 convs lowered to uint8 x int8 dot products, %d depthwise convs read codes",
             counts["pointwise"], counts["depthwise"])
    return mod


def _integer_operands(call, lookup_binding, dequantize):
    """(codes var, int8 weight [O, C/g, kh, kw], zero points [C] int) if ``call`` is a conv of dequantized
    codes (scale 1) by dequantized int8 weights (scale 1, zero point 0), NCHW/OIHW, else None."""
    from tvm import ir

    attrs = call.attrs
    if ([int(d) for d in attrs.dilation] != [1, 1]
            or attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW" or attrs.out_layout != "NCHW"):
        return None
    data, weight = (lookup_binding(arg) if isinstance(arg, ir.expr.Var) else None for arg in call.args)
    if not all(isinstance(e, ir.expr.Call) and e.op == dequantize for e in (data, weight)):
        return None
    codes, w_int = data.args[0], weight.args[0]
    if not isinstance(w_int, ir.expr.Constant) or w_int.value.dtype != "int8":
        return None
    if codes.ty.dtype != "uint8" or codes.ty.ndim != 4:
        return None
    w = w_int.value.numpy()
    if w.ndim != 4:
        return None
    scales = [_constant(data.args[1]), _constant(weight.args[1])]
    zero_point, w_zero = _constant(data.args[2]), _constant(weight.args[2])
    if any(s is None or not np.all(s == 1.0) for s in scales) or w_zero is None or np.any(w_zero != 0):
        return None
    channels = int(codes.ty.shape[1])
    if zero_point is None or zero_point.size not in (1, channels):
        return None
    return codes, w, np.broadcast_to(zero_point.astype(np.int64).reshape(-1), (channels,))


def _constant(expr):
    from tvm import ir

    return expr.value.numpy() if isinstance(expr, ir.expr.Constant) else None


def _tile_lanes(channels: int) -> int:
    """Output channels per int8 tile: 16 (a zmm of int32), or 8 (a ymm) where that avoids padding."""
    return next((lanes for lanes in _LANES if channels % lanes == 0), _LANES[0])


def _pack_weight(w: np.ndarray, zero_point: np.ndarray, lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights [O, C] int8 -> [O/lanes, C/4, lanes, 4] (zero-padded), and comp[O] = sum_c Z[c] w[o, c] (int32)."""
    out_ch, in_ch = w.shape
    o_pad, c_pad = -(-out_ch // lanes) * lanes, -(-in_ch // _GROUP) * _GROUP
    padded = np.zeros((o_pad, c_pad), np.int8)
    padded[:out_ch, :in_ch] = w
    packed = padded.reshape(o_pad // lanes, lanes, c_pad // _GROUP, _GROUP).transpose(0, 2, 1, 3)
    comp = (w.astype(np.int64) @ zero_point).astype(np.int32)
    return np.ascontiguousarray(packed), comp


def _pointwise_int8(codes, packed, comp, out_channels: int):
    """TE: codes [N, C, H, W] uint8, packed weights, comp [O] int32 -> float32 [N, O, H, W]."""
    from tvm import te, tirx

    n, channels, height, width = codes.shape
    o_blocks, c_groups, lanes = packed.shape[0], packed.shape[1], int(packed.shape[2])

    def pack(i, g, y, x, k):
        c = g * _GROUP + k
        if int(channels) % _GROUP == 0:
            return codes[i, c, y, x]
        return tirx.if_then_else(c < channels, codes[i, c, y, x], tirx.const(0, "uint8"))

    codes4 = te.compute((n, c_groups, height, width, _GROUP), pack, name=INT8_BLOCKS[0])
    g = te.reduce_axis((0, c_groups), "g")
    k = te.reduce_axis((0, _GROUP), "k")
    acc = te.compute(
        (n, o_blocks, height, width, lanes),
        lambda i, ob, y, x, lane: te.sum(
            codes4[i, g, y, x, k].astype("int32") * packed[ob, g, lane, k].astype("int32"), axis=[g, k]
        ),
        name=INT8_BLOCKS[1],
    )
    return te.compute(
        (n, out_channels, height, width),
        lambda i, o, y, x: (acc[i, o // lanes, y, x, o % lanes] - comp[o]).astype("float32"),
        name=INT8_BLOCKS[2],
    )


def _depthwise_lanes(channels: int) -> int:
    """Channels per block of the channel-blocked depthwise conv: a zmm (16 floats), else a ymm (8)."""
    return next(lanes for lanes in (16, 8) if channels % lanes == 0)


def _pack_depthwise_weight(w: np.ndarray, lanes: int) -> np.ndarray:
    """Depthwise weights [C, 1, kh, kw] -> [C/lanes, kh, kw, lanes] float32: one vector per tap and block."""
    channels, _, kh, kw = w.shape
    blocked = w.astype(np.float32).reshape(channels // lanes, lanes, kh, kw).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(blocked)


def _depthwise_from_codes(codes, weight, zero_point, strides, padding):
    """TE: a depthwise conv of (codes - Z) [N, C, H, W], zero padded, computed channel-blocked.

    The padding stage dequantizes the uint8 codes into planes of ``lanes`` channels side by side
    ([N, C/lanes, Hp, Wp, lanes]), so every tap of the kernel is one contiguous vector load and one FMA
    against the tap's weight vector whatever the stride or width; the sum runs over (kh, kw) in order,
    as TOPI's conv sums it. The last stage writes NCHW floats, onto which the conv's epilogue fuses.
    """
    from tvm import te, tirx

    n, channels, height, width = codes.shape
    blocks, kh, kw, lanes = (int(d) for d in weight.shape)
    top, left, bottom, right = padding
    sh, sw = strides

    def pad(i, cb, y, x, lane):
        inside = tirx.all(y >= top, y < height + top, x >= left, x < width + left)
        c = cb * lanes + lane
        value = codes[i, c, y - top, x - left].astype("float32") - zero_point[c]
        return tirx.if_then_else(inside, value, tirx.const(0.0, "float32"))

    padded = te.compute((n, blocks, height + top + bottom, width + left + right, lanes), pad,
                        name=DEPTHWISE_BLOCKS[0])
    ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
    out_h = (height + top + bottom - kh) // sh + 1
    out_w = (width + left + right - kw) // sw + 1
    acc = te.compute(
        (n, blocks, out_h, out_w, lanes),
        lambda i, cb, y, x, lane: te.sum(
            padded[i, cb, y * sh + ry, x * sw + rx, lane] * weight[cb, ry, rx, lane], axis=[ry, rx]
        ),
        name=DEPTHWISE_BLOCKS[1],
    )
    return te.compute(
        (n, channels, out_h, out_w),
        lambda i, c, y, x: acc[i, c // lanes, y, x, c % lanes],
        name=DEPTHWISE_BLOCKS[2],
    )


@functools.cache
def _vnni_intrinsic(lanes: int) -> str:
    """Register (once per width) and name a tensor intrinsic: C[lanes] int32 += A[4] uint8 . B[lanes, 4] int8
    per lane, one ``vpdpbusd`` on a zmm (16 lanes) or a ymm (8) register.

    Our own, not TVM's ``dot_16x4_vnni``: that one passes the byte operands as <16 x i32> where the
    LLVM TVM 0.27 is built with (22) declares ``llvm.x86.avx512.vpdpbusd.512`` on <64 x i8>, and
    importing ``tvm.s_tir.tensor_intrin`` parses every target's intrinsics (~35 s).
    """
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    width = 32 * lanes  # register bits
    acc_type, byte_type, word_type = f"int32x{lanes}", f"uint8x{4 * lanes}", f"int8x{4 * lanes}"
    llvm_name = f"llvm.x86.avx512.vpdpbusd.{width}"

    @T.prim_func(s_tir=True)
    def semantics(
        A: T.Buffer((4,), "uint8", offset_factor=1),
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
    def vpdpbusd(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((lanes, 4), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            a_word = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")  # the 4 codes, broadcast to every lane
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm_name),
                C.vload([0], dtype=acc_type),
                T.reinterpret(T.broadcast(a_word, lanes), dtype=byte_type),
                B.vload([0, 0], dtype=word_type),
                dtype=acc_type,
            )

    name = f"qfa_vnni_dot_{lanes}x4"
    TensorIntrin.register(name, semantics, vpdpbusd, override=True)
    return name


def schedule_int8_pointwise(sch, blocks, inline) -> bool:
    """Tile and tensorize the int8 dot product of ``sch`` (a fused PrimFunc made from ``_pointwise_int8``);
    False if it has none. ``blocks`` are the root's child blocks; ``inline(sch, block)`` folds an
    epilogue stage into its neighbour."""
    named = {sch.get(b).name_hint: b for b in blocks}
    if not all(name in named for name in INT8_BLOCKS):
        return False
    pack, dot = named[INT8_BLOCKS[0]], named[INT8_BLOCKS[1]]
    for block in blocks:  # the conversion and the conv's epilogue: one stage writing the output
        if not any(sch.get(block).same_as(sch.get(b)) for b in (pack, dot)):
            inline(sch, block)
    (out,) = sch.get_consumers(dot)
    blocked = _iterate_blocked(sch, out)
    packed_in_place = len(sch.get(pack).reads[0].source.shape) == 5  # blocked codes: 4 channels side by side
    if packed_in_place:
        sch.compute_inline(pack)

    n, ob, y, x, lane, g, k = sch.get_loops(dot)
    width = int(sch.get(x).extent)
    cols = max(d for d in range(1, min(width, 28) + 1) if width % d == 0)
    xo, xi = sch.split(x, [None, cols])
    sch.reorder(n, ob, y, xo, g, xi, lane, k)
    outer = sch.fuse(n, ob, y)
    sch.reverse_compute_at(out, xo, preserve_unit_loops=True)
    sch.parallel(outer)
    init = sch.decompose_reduction(dot, g)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(lane, _vnni_intrinsic(int(sch.get(lane).extent)))
    sch.unroll(xi)
    _vectorize_output(sch, out, blocked)
    if not packed_in_place:
        pack_loops = sch.get_loops(pack)
        sch.parallel(sch.fuse(*pack_loops[:3]))
    return True


def schedule_depthwise_blocked(sch, blocks, inline) -> bool:
    """Register-tile the channel-blocked depthwise conv of ``sch`` (a fused PrimFunc made from
    ``_depthwise_from_codes``); False if it has none. Arguments as ``schedule_int8_pointwise``."""
    named = {sch.get(b).name_hint: b for b in blocks}
    if not all(name in named for name in DEPTHWISE_BLOCKS):
        return False
    pad, conv = named[DEPTHWISE_BLOCKS[0]], named[DEPTHWISE_BLOCKS[1]]
    for block in blocks:  # the NCHW write and the conv's epilogue: one stage
        if not any(sch.get(block).same_as(sch.get(b)) for b in (pad, conv)):
            inline(sch, block)
    (out,) = sch.get_consumers(conv)
    blocked = _iterate_blocked(sch, out)

    n, cb, y, x, lane, ry, rx = sch.get_loops(conv)
    width = int(sch.get(x).extent)
    cols = max(d for d in range(1, min(width, _DW_COLS) + 1) if width % d == 0)
    xo, xi = sch.split(x, [None, cols])
    sch.reorder(n, cb, y, xo, ry, rx, xi, lane)
    outer = sch.fuse(n, cb)
    sch.compute_inline(sch.cache_write(conv, 0, "local"))  # the output stage reads the accumulators
    sch.reverse_compute_at(out, xo, preserve_unit_loops=True)
    sch.compute_at(pad, outer, preserve_unit_loops=True)
    fill = sch.decompose_padding(pad, sch.get_loops(pad)[-3])
    for block in (fill, pad):  # the copy gathers a pixel's channels (measured: as fast as the other order)
        sch.vectorize(sch.get_loops(block)[-1])
    sch.parallel(outer)
    sch.unroll(xi)
    sch.vectorize(lane)
    sch.decompose_reduction(conv, ry)
    _vectorize_output(sch, out, blocked)
    return True


def _iterate_blocked(sch, out) -> bool:
    """If ``out`` (the stage writing the function's output) writes blocked codes [N, C/16, H, W, 16]
    (``keep_codes_blocked``), make it iterate in that order too; True if so."""
    shape = sch.get(out).writes[0].source.shape
    if len(shape) != 5:
        return False
    lanes = int(shape[-1])
    sch.transform_block_layout(out, lambda n, c, y, x: (n, c // lanes, y, x, c % lanes))
    return True


def _vectorize_output(sch, out, blocked: bool) -> None:
    """The output stage at a tile: blocked, a vector of channels per pixel (as the tile holds them);
    NCHW, a vector of pixels per channel (a transpose of the tile)."""
    loops = sch.get_loops(out)
    sch.vectorize(loops[-1])
    sch.unroll(loops[-2] if blocked else loops[-3])


def keep_codes_blocked(mod):
    """``mod`` (legalized and fused) with the codes handed from one integer conv to the next in the
    blocked layout [N, C/lanes, H, W, lanes] (lanes 16 or 8) where both sides can take it.

    The producers (an int8 1x1 conv, a channel-blocked depthwise conv) compute their outputs in
    tiles of 16 or 8 channels, and the consumers (a depthwise conv, the codes packing of a 1x1 conv) want
    channels side by side: written NCHW, the codes were transposed once on each side, which took
    most of both functions' time. Only codes read by that one consumer are re-laid out; both
    PrimFuncs are copied (a fused function can be shared by several call sites) and the copies'
    buffers transformed; ``schedule_int8_pointwise`` and ``schedule_depthwise_blocked`` then schedule
    them like the others.
    """
    from tvm import ir, relax, tirx
    from tvm.relax.expr_functor import PyExprMutator, mutator
    from tvm.s_tir import Schedule

    call_tir = ir.Op.get("relax.call_tir")
    main = mod["main"]
    var2val = relax.analysis.get_var2val(main)
    uses: dict = {}
    for value in (*var2val.values(), main.body.body):
        for var in relax.analysis.free_vars(value):
            uses[var] = uses.get(var, 0) + 1

    readers = {DEPTHWISE_BLOCKS[0], INT8_BLOCKS[0]}  # the stages that read the codes
    writers = {DEPTHWISE_BLOCKS[1], INT8_BLOCKS[1]}  # the convs whose tiles hold channels of a pixel side by side
    callee_stages: dict = {}  # GlobalVar -> its stages, each with the channels side by side in its codes

    def stages(call) -> dict[str, int]:
        """The callee's stages by name: a writer's output or a reader's input codes buffer's last axis, else 0."""
        if not (isinstance(call, ir.expr.Call) and call.op == call_tir):
            return {}
        gvar = call.args[0]
        if gvar not in callee_stages:
            callee_stages[gvar] = {}
            if isinstance(mod[gvar], tirx.PrimFunc):
                sch = Schedule(mod[gvar])
                for block in (sch.get(b) for b in sch.get_child_blocks(sch.get_sblock("root"))):
                    name = block.name_hint
                    region = block.writes[0] if name in writers else block.reads[0] if name in readers else None
                    callee_stages[gvar][name] = int(region.source.shape[-1]) if region is not None else 0
        return callee_stages[gvar]

    edges = []  # (producer call, consumer call, consumer stage, lanes)
    for value in var2val.values():
        reader = readers.intersection(stages(value))
        if not reader:
            continue
        reader = reader.pop()
        codes = value.args[1].fields[0]
        producer = var2val.get(codes)
        writer = writers.intersection(stages(producer))  # {} when the codes are not a call's output
        if not writer or uses.get(codes) != 1:
            continue
        lanes = stages(producer)[writer.pop()]
        # a depthwise conv takes blocks of its own width; a 1x1 conv any multiple of its 4-byte words
        wanted = stages(value)[DEPTHWISE_BLOCKS[1]] if reader == DEPTHWISE_BLOCKS[0] else lanes
        if int(codes.ty.shape[1]) % lanes == 0 and lanes == wanted:
            edges.append((producer, value, reader, lanes))

    def relaid(func, reader: str | None, lanes: int):
        index_map = lambda n, c, h, w: (n, c // lanes, h, w, c % lanes)  # noqa: E731
        sch = Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        if reader is None:  # the producer: its last stage writes the function's output
            sch.transform_layout(blocks[-1], ("write", 0), index_map)
        else:  # the consumer: the stage reading the codes (its first operand)
            sch.transform_layout(sch.get_sblock(reader), ("read", 0), index_map)
        return sch.mod["main"]

    @mutator
    class Relayout(PyExprMutator):
        def __init__(self, module):
            super().__init__(module)
            self.copies = {}  # (function, its re-laid-out sides) -> the transformed copy

        def visit_call_(self, call):
            new = super().visit_call_(call)
            sides = [(None, lanes) for p, _, _, lanes in edges if call.same_as(p)]
            sides += [(reader, lanes) for _, c, reader, lanes in edges if call.same_as(c)]
            if not sides:
                return new
            # a conv can both receive and hand over blocked codes: transform its copy for each side
            gvar, func = call.args[0], mod[call.args[0]]
            for reader, lanes in sides:
                func = relaid(func, reader, lanes)
            key = (gvar.name_hint, tuple(sides))
            if key not in self.copies:
                self.copies[key] = self.builder_.add_func(func, gvar.name_hint + "_blocked")
            out_ty = call.ty
            for reader, lanes in sides:
                if reader is None:
                    n, c, h, w = (int(d) for d in call.ty.shape)
                    out_ty = relax.TensorType([n, c // lanes, h, w, lanes], "uint8")
            return relax.call_tir(self.copies[key], new.args[1], out_ty)

    relayout = Relayout(mod)
    relayout.builder_.update_func(mod.get_global_var("main"), relayout.visit_expr(main))
    log.info("tiled-vnni: %d integer conv -> integer conv edges hand their codes over channel-blocked", len(edges))
    return relax.transform.DeadCodeElimination()(relayout.builder_.get())
