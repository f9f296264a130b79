"""Compile QDQ ONNX with Apache TVM for a device, run it there (locally or over TVM RPC), measure it.

One idea per module: ``device`` (profiles), ``compile`` (ONNX -> model.so), ``registry`` (which
schedule a target gets; the schedules live in ``targets/x86``, ``targets/arm``, ``targets/cpu``),
``schedule`` (shared TIR helpers), ``runner`` (local/RPC
sessions), ``parity`` (onnxruntime reference), ``profile`` (latency + parity of an artifact),
``procs`` (tracker/server processes), ``emulated_pi`` (an ARM64 board under qemu-user),
``tune`` (MetaSchedule). Importing this package does not import TVM.
"""

from qfa_deploy.deploy.compile import compile_artifact
from qfa_deploy.deploy.device import Device, MeasureProtocol, RunnerSpec, list_devices, load_device
from qfa_deploy.deploy.profile import profile_artifact

__all__ = [
    "Device",
    "MeasureProtocol",
    "RunnerSpec",
    "compile_artifact",
    "list_devices",
    "load_device",
    "profile_artifact",
]
