"""Rewrite calls of an imported Relax module (before legalization) into TE computes.

Shared by the integer lowering (``targets.cpu.integer``), the transposed squeeze-excite convs
(``targets.cpu.gemv``) and the exact division (``targets.cpu.exact_division``). Each supplies
``rewrite(builder, call, lookup_binding)`` returning ``(kind, call_te result)`` for a call it takes,
None for one it leaves. The new PrimFuncs are marked with the op pattern of what they replace (convs:
fusable like a conv2d, so the conv's epilogue still fuses onto them), and operands nothing reads any
more (the codes' float copies) are dropped.
"""

from __future__ import annotations

from collections import Counter

__all__ = ["ELEMWISE", "OPAQUE", "rewrite_calls", "rewrite_convs", "use_counts"]

ELEMWISE = 0  # Relax op pattern: fuses with its producer and consumers
_OUT_EWISE_FUSABLE = 4  # Relax op pattern: elementwise consumers may fuse onto the output
OPAQUE = 8  # Relax op pattern: fuses with nothing


def rewrite_convs(mod, rewrite):
    """(``mod`` with ``rewrite`` applied to every conv2d call, how many it rewrote of each kind)."""
    return rewrite_calls(mod, rewrite, ("relax.nn.conv2d",), _OUT_EWISE_FUSABLE)


def rewrite_calls(mod, rewrite, op_names: tuple[str, ...], op_pattern: int):
    """(``mod`` with ``rewrite`` applied to every call of ``op_names``, how many it rewrote of each
    kind); the new PrimFuncs get ``op_pattern`` (Relax's fusion pattern kind)."""
    from tvm import ir, relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    ops = [ir.Op.get(name) for name in op_names]

    @mutator
    class Rewriter(PyExprMutator):
        def __init__(self, module):
            super().__init__(module)
            self.module, self.made, self.counts = module, [], Counter()

        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not any(call.op == op for op in ops):
                return call
            made = rewrite(self.builder_, call, self.lookup_binding)
            if made is None:
                return call
            kind, out = made
            self.counts[kind] += 1
            self.made.append(out.args[0])
            return out

        def run(self):
            for gvar, func in self.module.functions.items():
                if isinstance(func, relax.Function):
                    self.builder_.update_func(gvar, self.visit_expr(func))
            module = self.builder_.get()
            for gvar in self.made:
                module[gvar] = module[gvar].with_attr("op_pattern", op_pattern)
            return module

    rewriter = Rewriter(mod)
    return relax.transform.DeadCodeElimination()(rewriter.run()), rewriter.counts


def use_counts(func) -> dict:
    """How many bindings (and the result) of the Relax function ``func`` read each variable."""
    from tvm import relax

    uses: dict = {}
    for value in (*relax.analysis.get_var2val(func).values(), func.body.body):
        for var in relax.analysis.free_vars(value):
            uses[var] = uses.get(var, 0) + 1
    return uses
