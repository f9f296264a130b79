"""Run one model N times with one thread, under emulation or natively: the program the simulator
counts and the x86 validation times. Standalone (numpy and the runtime only): it runs inside the
emulated Pi's aarch64 Python, which has no qfa_deploy.

    python infer_main.py RUNTIME MODEL N [--shape 1,3,224,224] [--time | --phases]
    RUNTIME: tvm, ort, tflite (LiteRT with its default XNNPACK delegate) or tflite-builtin (without)

The input is a fixed pseudo-random image of the model's input shape (a TVM library does not record
it: --shape, else the meta.json beside it). With --time it prints the median of N timed runs in ms
(after 3 warm-ups) instead of running silently. With --phases it runs one inference, then N between
two phase marks for the bbcount plugin (a write to fd 0x5157, which fails harmlessly).
"""

import os
import sys
import time

os.environ.setdefault("TVM_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def tvm_runner(path, shape):
    import tvm
    from tvm.runtime.vm import VirtualMachine  # not tvm.relax: the runtime-only library lacks the compiler

    vm = VirtualMachine(tvm.runtime.load_module(path), tvm.cpu())
    dims = shape
    if dims is None:
        import json

        with open(os.path.join(os.path.dirname(path), "meta.json")) as f:
            dims = json.load(f)["compile"]["inputs"][0]["shape"]
    data = tvm.runtime.tensor(_image(dims)) if hasattr(tvm.runtime, "tensor") else tvm.nd.array(_image(dims))
    return lambda: vm["main"](data)


def ort_runner(path, shape):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    first = session.get_inputs()[0]
    feed = {first.name: _image([d if isinstance(d, int) else 1 for d in first.shape])}
    return lambda: session.run(None, feed)


def tflite_runner(path, shape, xnnpack=True):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = Interpreter(model_path=path, num_threads=1, experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    image = _image(list(detail["shape"]))
    if detail["dtype"] != np.float32:
        scale, zero = detail["quantization"]
        image = np.clip(np.round(image / scale + zero), -128, 127).astype(detail["dtype"])
    interpreter.set_tensor(detail["index"], image)
    return interpreter.invoke


def _mark():
    try:
        os.write(0x5157, b"")  # qfa_deploy.deploy.sim.blocks.MARK_FD
    except OSError:
        pass


def _image(shape):
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def main(argv):
    runtime, path, n = argv[0], argv[1], int(argv[2])
    shape = [int(d) for d in argv[argv.index("--shape") + 1].split(",")] if "--shape" in argv else None
    runners = {"tvm": tvm_runner, "ort": ort_runner, "tflite": tflite_runner,
               "tflite-builtin": lambda p, s: tflite_runner(p, s, xnnpack=False)}
    run = runners[runtime](path, shape)
    if "--phases" in argv:
        run()
        if os.environ.get("QFA_SIM_MAPS"):  # where each library sits, for per-function profiles
            with open("/proc/self/maps") as maps, open(os.environ["QFA_SIM_MAPS"], "w") as out:
                out.write(maps.read())
        _mark()
        for _ in range(n):
            run()
        _mark()
        return
    if "--time" not in argv:
        for _ in range(n):
            run()
        return
    for _ in range(3):
        run()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    print(f"{1e3 * float(np.median(times)):.6f}")


if __name__ == "__main__":
    main(sys.argv[1:])
