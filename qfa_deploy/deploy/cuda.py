"""Moved to :mod:`qfa_deploy.deploy.targets.cuda.kernels` (issue 26). These names stay here only for the
importers outside the deploy package not yet moved over (``commands/export_cmds.py``, docs/deploy.md)."""

from __future__ import annotations

from qfa_deploy.deploy.targets.cuda.kernels import check_cuda_request, embedded_cuda_modules

__all__ = ["check_cuda_request", "embedded_cuda_modules"]
