"""Scratch tiles on the stack, whatever their size (up to a budget): the CPU schedules' TIR pipeline.

TVM 0.27's ``LowerTVMBuiltin`` keeps a CPU buffer on the stack only when it is in "global" scope and
under 1 KB (``kMaxStackAlloca``); every other one becomes a ``TVMBackendAllocWorkspace`` /
``TVMBackendFreeWorkspace`` pair through the runtime's workspace pool, executed wherever TVM placed
the allocation, i.e. once per tile for an accumulator tile. The int8 1x1 convs' tiles are 1-2 KB (a
row of pixels by 16-64 int32 lanes): ~2900 pool round trips per inference of a w1.2 subnet at 224.
Here, before that lowering, each such buffer of constant size up to ``MAX_BUFFER_BYTES`` is marked
``disable_lower_builtin`` (the lowering's own opt-out), so LLVM gets an ``alloca`` in the enclosing
function's entry block, until ``STACK_BUDGET_BYTES`` per function are taken; larger ones (whole
padded planes) stay with the pool. Nothing computed changes: only where the bytes live.

TVM 0.27 has no Python statement mutator, so ``_rebuilt`` rebuilds the few statement kinds that hold
statements; every other kind is a leaf here (allocations are flat statements in this TVM).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["MAX_BUFFER_BYTES", "PIPELINE", "STACK_BUDGET_BYTES", "register_pipeline", "stack_scratch"]

PIPELINE = "qfa-cpu-stack-scratch"  # the TIR pipeline's name in TVM's registry (tvm.compile(tir_pipeline=...))
MAX_BUFFER_BYTES = 16 * 1024  # an accumulator or packing tile; padded planes are larger and stay pooled
STACK_BUDGET_BYTES = 64 * 1024  # per function (each parallel task's lambda is one): far below a thread's stack
DISABLE_LOWER_BUILTIN = "disable_lower_builtin"  # tirx::transform::kDisableLowerTVMBuiltin


def stack_scratch(func):
    """``func`` (a host PrimFunc before ``LowerTVMBuiltin``) with its small global scratch buffers marked
    to stay on the stack, in program order until the budget is spent."""
    body = _rebuilt(func.body, _Budget(STACK_BUDGET_BYTES))
    return func if body.same_as(func.body) else func.with_body(body)


@dataclass
class _Budget:
    """The stack bytes a function may still give its scratch buffers."""

    remaining: int

    def take(self, nbytes: int) -> bool:
        if nbytes > self.remaining:
            return False
        self.remaining -= nbytes
        return True


def _rebuilt(stmt, budget: _Budget):
    from tvm import tirx

    if isinstance(stmt, tirx.AllocBuffer):
        return _on_stack(stmt, budget)
    if isinstance(stmt, tirx.SeqStmt):
        seq = [_rebuilt(s, budget) for s in stmt.seq]
        return stmt if all(a.same_as(b) for a, b in zip(seq, stmt.seq, strict=True)) else tirx.SeqStmt(seq, stmt.span)
    if isinstance(stmt, tirx.For):
        body = _rebuilt(stmt.body, budget)
        return stmt if body.same_as(stmt.body) else tirx.For(
            stmt.loop_var, stmt.min, stmt.extent, stmt.kind, body, stmt.thread_binding, stmt.annotations,
            stmt.step, stmt.span)
    if isinstance(stmt, tirx.AttrStmt):
        body = _rebuilt(stmt.body, budget)
        return stmt if body.same_as(stmt.body) else tirx.AttrStmt(stmt.node, stmt.attr_key, stmt.value, body,
                                                                 stmt.span)
    if isinstance(stmt, tirx.IfThenElse):
        then_case = _rebuilt(stmt.then_case, budget)
        else_case = _rebuilt(stmt.else_case, budget) if stmt.else_case is not None else None
        unchanged = then_case.same_as(stmt.then_case) and (else_case is None or else_case.same_as(stmt.else_case))
        return stmt if unchanged else tirx.IfThenElse(stmt.condition, then_case, else_case, stmt.span)
    if isinstance(stmt, tirx.While):
        body = _rebuilt(stmt.body, budget)
        return stmt if body.same_as(stmt.body) else tirx.While(stmt.condition, body, stmt.span)
    return stmt


def _on_stack(alloc, budget: _Budget):
    """``alloc`` marked for the stack if it is a global buffer of constant size that fits the budget."""
    from tvm import tirx

    buffer = alloc.buffer
    if buffer.scope() != "global" or not all(isinstance(d, tirx.IntImm) for d in buffer.shape):
        return alloc
    nbytes = math.prod(int(d) for d in buffer.shape) * buffer.dtype.bits * buffer.dtype.lanes // 8
    padded = -(-nbytes // 64) * 64  # at most what the alloca takes, aligned
    if nbytes > MAX_BUFFER_BYTES or DISABLE_LOWER_BUILTIN in alloc.annotations or not budget.take(padded):
        return alloc
    on_stack = tirx.IntImm("int32", 1)  # the lowering reads the flag as an IntImm, not a bool
    return tirx.AllocBuffer(buffer, {**alloc.annotations, DISABLE_LOWER_BUILTIN: on_stack}, alloc.span)


def register_pipeline() -> str:
    """Register (again: idempotent) TVM's default TIR pipeline with ``stack_scratch`` run on the host
    functions just before ``LowerTVMBuiltin``; returns its name for ``tvm.compile(tir_pipeline=...)``."""
    import tvm
    from tvm.s_tir.pipeline import default_s_tir_pipeline
    from tvm.tirx.compilation_pipeline import register_tir_pipeline

    def factory():
        lower, finalize_host, finalize_device = default_s_tir_pipeline()
        mark = tvm.tirx.transform.prim_func_pass(lambda f, _mod, _ctx: stack_scratch(f), opt_level=0,
                                                 name="qfa.StackScratch")
        return lower, lambda: tvm.ir.transform.Sequential([mark, finalize_host()]), finalize_device

    register_tir_pipeline(PIPELINE, factory)
    return PIPELINE
