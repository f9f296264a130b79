"""A depthwise conv's per-position constants read in the channel-blocked order it computes in.

A depthwise conv of codes with a zero point and zero padding has a bias that depends on the position
(the border taps see the padding, not ``-Z``): the exported graph adds it as a [C, H, W] float constant
in the conv's epilogue. The epilogue runs in the conv's tiles of ``lanes`` channels side by side, so
in [C, H, W] every vector of the bias was gathered lane by lane, ``H * W`` floats apart (~40% of a
depthwise epilogue's instructions on the Cortex-A72). ``block_position_constants`` stores each such
constant as [C/lanes, H, W, lanes] at compile time and re-lays the reading function's buffer to match:
one contiguous vector load, the same values, the same arithmetic.
"""

from __future__ import annotations

import logging

import numpy as np

from qfa_deploy.deploy.targets.cpu.integer import DEPTHWISE_BLOCKS

__all__ = ["block_position_constants"]

log = logging.getLogger(__name__)


def block_position_constants(mod):
    """``mod`` (legalized and fused) with the [C, H, W] float constants its depthwise functions read
    stored and read channel-blocked, in the width of their conv's blocks."""
    from tvm import ir, relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    call_tir_op = ir.Op.get("relax.call_tir")
    counts = {"constants": 0}

    @mutator
    class Blocker(PyExprMutator):
        def __init__(self, module):
            super().__init__(module)
            self.copies: dict = {}  # (function name, blocked argument positions) -> the re-laid-out copy

        def visit_call_(self, call):
            new = super().visit_call_(call)
            if not (isinstance(new, ir.expr.Call) and new.op == call_tir_op):
                return new
            func = mod[new.args[0]]
            plan = _blocked_arguments(func, new.args[1].fields)
            if not plan:
                return new
            positions, lanes = plan
            key = (new.args[0].name_hint, positions)
            if key not in self.copies:
                self.copies[key] = self.builder_.add_func(_relaid(func, positions, lanes),
                                                          new.args[0].name_hint + "_blockedconst")
            args = list(new.args[1].fields)
            for k in positions:
                args[k] = relax.const(_block(args[k].value.numpy(), lanes))
            counts["constants"] += len(positions)
            return relax.call_tir(self.copies[key], relax.Tuple(args), new.ty)

    blocker = Blocker(mod)
    main = mod["main"]
    blocker.builder_.update_func(mod.get_global_var("main"), blocker.visit_expr(main))
    log.info("depthwise convs: %d per-position constants stored channel-blocked", counts["constants"])
    return relax.transform.DeadCodeElimination()(blocker.builder_.get())


def _blocked_arguments(func, args) -> tuple[tuple[int, ...], int] | None:
    """(positions of ``args`` to block, lanes) for a depthwise PrimFunc: the float32 constants shaped
    [C, H, W] like its conv's output (C = blocks x lanes); None if it is no depthwise function or has
    none."""
    from tvm import ir, tirx

    if not isinstance(func, tirx.PrimFunc):
        return None
    conv = _stage_buffer(func, DEPTHWISE_BLOCKS[1])
    if conv is None:
        return None
    _, blocks, height, width, lanes = (int(d) for d in conv.shape)
    wanted = (blocks * lanes, height, width)
    positions = tuple(
        k for k, arg in enumerate(args)
        if isinstance(arg, ir.expr.Constant) and arg.value.dtype == "float32" and tuple(arg.value.shape) == wanted
    )
    return (positions, lanes) if positions else None


def _root_blocks(sch) -> list:
    """The blocks under the root of the PrimFunc ``sch`` schedules (its stages)."""
    return [sch.get(b) for b in sch.get_child_blocks(sch.get_sblock("root"))]


def _stage_buffer(func, name: str):
    """The buffer the stage ``name`` of ``func`` writes, or None if it has no such stage."""
    from tvm.s_tir import Schedule

    return next((b.writes[0].source for b in _root_blocks(Schedule(func)) if b.name_hint == name), None)


def _relaid(func, positions: tuple[int, ...], lanes: int):
    """``func`` reading its parameters at ``positions`` (of the call's arguments, i.e. of its parameters)
    as [C/lanes, H, W, lanes]."""
    from tvm.s_tir import Schedule

    index_map = lambda c, h, w: (c // lanes, h, w, c % lanes)  # noqa: E731
    sch = Schedule(func)
    for k in positions:
        buffer = func.params[k]  # TVM 0.27: a PrimFunc parameter is its buffer (matched by name)
        reader = next(b for b in _root_blocks(sch) if any(region.source.name == buffer.name for region in b.reads))
        index = next(i for i, region in enumerate(reader.reads) if region.source.name == buffer.name)
        sch.transform_layout(sch.get_sblock(reader.name_hint), ("read", index), index_map)
    return sch.mod["main"]


def _block(values: np.ndarray, lanes: int) -> np.ndarray:
    """[C, H, W] -> [C/lanes, H, W, lanes]."""
    channels, height, width = values.shape
    return np.ascontiguousarray(values.reshape(channels // lanes, lanes, height, width).transpose(0, 2, 3, 1))
