"""ARM speed without a board: per-block execution counts from qemu-user times each block's
steady-state cycles from llvm-mca, summed (see docs/simulation.md). Validated on x86 where real
times exist (``validate_x86``)."""
