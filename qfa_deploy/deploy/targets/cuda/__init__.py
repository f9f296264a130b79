"""CUDA targets: the GPU schedule and the kernels' ahead-of-time compilation (``kernels``).

``dlight`` is what a CUDA build gets today and the only schedule offered: TVM 0.27's default CUDA
pipeline (``tvm.relax.backend.cuda.legalize_passes``, run inside ``tvm.compile``) schedules every fused
function with DLight's default GPU rules (``s_tir.dlight.gpu``: Matmul, GEMV, Reduction,
GeneralReduction, Fallback), so ``compile_artifact`` hands it the module as imported (``apply`` is
None). No tensor intrinsic is registered. Importing this package does not import TVM.
"""

from __future__ import annotations

from qfa_deploy.deploy.registry import TargetSchedule

__all__ = ["ARCH", "SCHEDULES"]

ARCH = "cuda"
SCHEDULES = (
    TargetSchedule("dlight", "dlight-gpu", ARCH, None,
                   summary="TVM's CUDA pipeline: DLight's default GPU rules (matmul, GEMV, reductions, fallback)"),
)
