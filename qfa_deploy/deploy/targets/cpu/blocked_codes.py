"""Codes handed from one integer conv to the next in the channel-blocked layout both compute in."""

from __future__ import annotations

import logging

from qfa_deploy.deploy.targets.cpu.conv_rewrite import use_counts
from qfa_deploy.deploy.targets.cpu.integer import BITSERIAL_BLOCKS, DEPTHWISE_BLOCKS, INT8_BLOCKS

__all__ = ["keep_codes_blocked"]

log = logging.getLogger(__name__)


def keep_codes_blocked(mod, name: str = "integer"):
    """``mod`` (legalized and fused) with the codes handed from one integer conv to the next in the
    blocked layout [N, C/lanes, H, W, lanes] (lanes: the producer's tile) where both sides can take it.

    The producers (an int8 1x1 conv, a channel-blocked depthwise conv) compute their outputs in
    tiles of a few channels, and the consumers (a depthwise conv, the codes packing of a 1x1 conv) want
    channels side by side: written NCHW, the codes were transposed once on each side, which took
    most of both functions' time. Only codes read by that one consumer are re-laid out; both
    PrimFuncs are copied (a fused function can be shared by several call sites) and the copies'
    buffers transformed; ``schedule_int8_pointwise`` and ``schedule_depthwise_blocked`` then schedule
    them like the others.
    """
    from tvm import relax

    main = mod["main"]
    var2val = relax.analysis.get_var2val(main)
    edges = _blocked_edges(mod, var2val, use_counts(main))
    relayout = _relayout_mutator(mod, edges)
    relayout.builder_.update_func(mod.get_global_var("main"), relayout.visit_expr(main))
    log.info("%s: %d integer conv -> integer conv edges hand their codes over channel-blocked", name, len(edges))
    return relax.transform.DeadCodeElimination()(relayout.builder_.get())


class _CalleeStages:
    """The stages of the PrimFuncs ``call_tir`` calls, by name: for a writer, the tile axis of its output
    buffer [N, C/tile, H, W, tile, ...] (the channels it keeps side by side); for a reader, its input
    codes buffer's last axis; else 0."""

    # the stages that read the codes, and the convs whose tiles hold a pixel's channels
    readers = frozenset({DEPTHWISE_BLOCKS[0], INT8_BLOCKS[0], BITSERIAL_BLOCKS[0]})
    writers = frozenset({DEPTHWISE_BLOCKS[1], INT8_BLOCKS[1], BITSERIAL_BLOCKS[1]})

    def __init__(self, mod):
        from tvm import ir

        self.mod = mod
        self.call_tir = ir.Op.get("relax.call_tir")
        self.cache: dict = {}  # GlobalVar -> its stages

    def __call__(self, call) -> dict[str, int]:
        from tvm import ir, tirx
        from tvm.s_tir import Schedule

        if not (isinstance(call, ir.expr.Call) and call.op == self.call_tir):
            return {}
        gvar = call.args[0]
        if gvar not in self.cache:
            self.cache[gvar] = {}
            if isinstance(self.mod[gvar], tirx.PrimFunc):
                sch = Schedule(self.mod[gvar])
                for block in (sch.get(b) for b in sch.get_child_blocks(sch.get_sblock("root"))):
                    name = block.name_hint
                    if name in self.writers:
                        self.cache[gvar][name] = int(block.writes[0].source.shape[4])
                    else:
                        self.cache[gvar][name] = int(block.reads[0].source.shape[-1]) if name in self.readers else 0
        return self.cache[gvar]


def _blocked_edges(mod, var2val, uses: dict) -> list[tuple]:
    """(producer call, consumer call, consumer stage, lanes) for each integer conv whose codes only one
    integer conv reads, in a tile width both take."""
    stages = _CalleeStages(mod)
    edges = []
    for value in var2val.values():
        reader = stages.readers.intersection(stages(value))
        if not reader:
            continue
        reader = next(iter(reader))
        codes = value.args[1].fields[0]
        producer = var2val.get(codes)
        writer = stages.writers.intersection(stages(producer))  # {} when the codes are not a call's output
        if not writer or uses.get(codes) != 1:
            continue
        lanes = stages(producer)[next(iter(writer))]
        # a depthwise conv reads its blocks out of any multiple of their width (a 16-channel sdot tile
        # holds four 4-channel blocks side by side), and gathers a wider block (8 int16 lanes) out of
        # narrower tiles in its padding stage; a 1x1 conv reads any multiple of its 4-byte words
        depthwise = reader == DEPTHWISE_BLOCKS[0]
        block = stages(value)[DEPTHWISE_BLOCKS[1]] if depthwise else lanes
        channels = int(codes.ty.shape[1])
        if depthwise and block and block % lanes == 0 and channels % block == 0:
            # the producer writes its narrower tiles into the depthwise conv's blocks: the padding stage
            # then loads a whole block a pixel (gathered out of the tiles, LLVM widened 4-byte vectors)
            lanes = block
        if channels % lanes == 0 and block and lanes % block == 0:
            edges.append((producer, value, reader, lanes))
    return edges


def _relaid(func, reader: str | None, lanes: int):
    """``func`` with its output (``reader`` None: the producer) or the codes its stage ``reader`` reads
    (the consumer) in the layout [N, C/lanes, H, W, lanes]."""
    from tvm.s_tir import Schedule

    index_map = lambda n, c, h, w: (n, c // lanes, h, w, c % lanes)  # noqa: E731
    sch = Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    if reader is None:  # the producer: its last stage writes the function's output
        sch.transform_layout(blocks[-1], ("write", 0), index_map)
    else:  # the consumer: the stage reading the codes (its first operand)
        sch.transform_layout(sch.get_sblock(reader), ("read", 0), index_map)
    return sch.mod["main"]


def _relayout_mutator(mod, edges: list[tuple]):
    """A Relax mutator of ``mod`` calling, for each side of ``edges``, a re-laid-out copy of the callee."""
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

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
                func = _relaid(func, reader, lanes)
            key = (gvar.name_hint, tuple(sides))
            if key not in self.copies:
                self.copies[key] = self.builder_.add_func(func, gvar.name_hint + "_blocked")
            out_ty = call.ty
            for reader, lanes in sides:
                if reader is None:
                    n, c, h, w = (int(d) for d in call.ty.shape)
                    out_ty = relax.TensorType([n, c // lanes, h, w, lanes], "uint8")
            return relax.call_tir(self.copies[key], new.args[1], out_ty)

    return Relayout(mod)
