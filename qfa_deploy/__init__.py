"""qfa-deploy: a hardware-aware deployment toolkit for BatchQuant / Quantized-for-all supernets."""

from qfa_deploy.arch import ArchConfig, load_arch, sample_arch
from qfa_deploy.errors import QfaError
from qfa_deploy.space import SearchSpace, create_space, list_spaces

__all__ = [
    "ArchConfig",
    "QfaError",
    "SearchSpace",
    "create_space",
    "list_spaces",
    "load_arch",
    "sample_arch",
]
__version__ = "0.1.0"
