"""Lowerings and schedules every CPU target shares, parametrised by its ``VectorUnit`` / ``IntegerPlan``:
``tiled`` (register-tiled float convs), ``gemv`` (transposed squeeze-excite weights), ``integer``,
``integer_schedule`` and ``blocked_codes`` (convs on the uint8 codes), ``dot_intrinsic`` (one
dot-product instruction as a TIR tensor intrinsic), ``conv_rewrite`` (the Relax rewrite they use)."""
