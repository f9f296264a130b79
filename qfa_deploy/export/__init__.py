"""Exporters: they read the folded form (``qfa_deploy.fold``), never the PyTorch modules.

- ``onnx_export``: QDQ ONNX (uint8 activations, int8 weights, opset 17).
- ``verify``: parity of PyTorch, onnxruntime and TVM on an exported model.
- ``artifact``: an artifact folder (``model.onnx``, compiled files, ``meta.json``), written whole.
- ``pipeline``: ``export_subnet(ExportConfig)``, checkpoint + arch config to an artifact (``qfa-deploy export``).
"""

from qfa_deploy.export.onnx_export import DEFAULT_OPSET, export_onnx, save_onnx

__all__ = ["DEFAULT_OPSET", "export_onnx", "save_onnx"]
