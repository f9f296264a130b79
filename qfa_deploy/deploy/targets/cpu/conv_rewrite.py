"""Rewrite the conv2d calls of an imported Relax module (before legalization) into TE computes.

Shared by the integer lowering (``targets.cpu.integer``) and the transposed squeeze-excite convs
(``targets.cpu.gemv``). Each supplies ``rewrite(builder, call, lookup_binding)`` returning
``(kind, call_te result)`` for a conv it takes, None for one it leaves. The new PrimFuncs are marked
fusable like a conv2d, so the conv's epilogue (bias, activation, quantize) still fuses onto them,
and operands nothing reads any more (the codes' float copies) are dropped.
"""

from __future__ import annotations

from collections import Counter

__all__ = ["rewrite_convs"]

_OUT_EWISE_FUSABLE = 4  # Relax op pattern: elementwise consumers may fuse onto the output


def rewrite_convs(mod, rewrite):
    """(``mod`` with ``rewrite`` applied to every conv2d call, how many it rewrote of each kind)."""
    from tvm import ir, relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    conv2d = ir.Op.get("relax.nn.conv2d")

    @mutator
    class Rewriter(PyExprMutator):
        def __init__(self, module):
            super().__init__(module)
            self.module, self.made, self.counts = module, [], Counter()

        def visit_call_(self, call):
            call = super().visit_call_(call)
            if call.op != conv2d:
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
                module[gvar] = module[gvar].with_attr("op_pattern", _OUT_EWISE_FUSABLE)
            return module

    rewriter = Rewriter(mod)
    return relax.transform.DeadCodeElimination()(rewriter.run()), rewriter.counts
