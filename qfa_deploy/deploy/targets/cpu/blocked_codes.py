"""Codes handed from one integer conv to the next in the channel-blocked layout both compute in."""

from __future__ import annotations

import logging

from qfa_deploy.deploy.targets.cpu.integer import DEPTHWISE_BLOCKS, INT8_BLOCKS

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
    log.info("%s: %d integer conv -> integer conv edges hand their codes over channel-blocked", name, len(edges))
    return relax.transform.DeadCodeElimination()(relayout.builder_.get())
