"""Latency lookup tables: per-device block latencies that the search uses as its constraint."""

from qfa_deploy.lut.keys import LatencyKey, arch_keys, space_keys
from qfa_deploy.lut.table import LatencyTable

__all__ = ["LatencyKey", "LatencyTable", "arch_keys", "space_keys"]
