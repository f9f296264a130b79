"""Put on PYTHONPATH of the RPC tracker/server processes we start (see ``procs.rpc_environment``).

``import tvm`` imports torch when it is installed (tvm_ffi does, for DLPack interop): ~10 s of a
~11 s start on a busy 2-core machine, in the process and again in its popen_worker child. A tracker
or an RPC server never needs torch, so it is hidden from them: ``import torch`` raises ImportError,
which tvm_ffi expects and skips.
"""

import sys

sys.modules.setdefault("torch", None)
