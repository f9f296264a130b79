"""A device whose timings are simulated cycles: the ``Session`` of a ``{"kind": "simulated"}`` runner.

``lut build``/``lut validate``/``profile`` load and time libraries through it as through a board;
each "timing" is one estimate (cycles at the CPU's nominal clock), the same every time it is asked.
It computes no outputs: correctness is checked on the emulated Pi (``rasp4b-emulated``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qfa_deploy.deploy.device import Device, MeasureProtocol, Timing
from qfa_deploy.deploy.elf import elf_machine
from qfa_deploy.deploy.sim.estimate import CPUS, host_python_env, simulate
from qfa_deploy.errors import QfaError


class SimulatedSession:
    def __init__(self, device: Device):
        self.device = device
        self.cpu = CPUS[device.runner.cpu]
        if self.cpu.arch == "aarch64":
            from qfa_deploy.deploy.emulated_pi import build_emulated_pi

            image = build_emulated_pi()
            self.python, self.rootfs = [str(image.python)], image.cpu_root(self.cpu.name)
            self.env = image.one_thread_environment()
        else:
            (self.python, self.env), self.rootfs = host_python_env(), None

    def load(self, lib_path: Path) -> Path:
        lib_path = Path(lib_path)
        if not lib_path.is_file():
            raise QfaError(f"{lib_path} does not exist")
        machine = elf_machine(lib_path)
        if machine != self.cpu.arch:
            raise QfaError(f"{lib_path} is built for {machine} and simulated device {self.device.name} is "
                           f"{self.cpu.arch}")
        return lib_path

    def time(self, lib_path: Path, inputs: list[np.ndarray], protocol: MeasureProtocol | None = None) -> Timing:
        estimate = simulate("tvm", lib_path, self.cpu, python=self.python, env=self.env, rootfs=self.rootfs,
                            shape=list(inputs[0].shape))
        return Timing(seconds=(estimate.cycles / (self.cpu.ghz * 1e9),),
                      protocol=protocol or self.device.protocol, threads=1)

    def layer_times(self, lib_path: Path, inputs: list[np.ndarray], runs: int = 2) -> dict:
        """Where an inference's simulated cycles go, per function and kind of layer, as milliseconds at
        the CPU's nominal clock (``deploy.layer_times``; calls are not counted here)."""
        from qfa_deploy.deploy.layer_times import summarize
        from qfa_deploy.deploy.sim.functions import function_profile

        rows = function_profile("tvm", lib_path, self.cpu, python=self.python, env=self.env, rootfs=self.rootfs,
                                runs=runs, shape=list(inputs[0].shape), top=None)
        own = f"{Path(lib_path).name}:"  # the model's own functions, named without their library
        functions = {row["function"].removeprefix(own): (row["cycles"] / (self.cpu.ghz * 1e6), None) for row in rows}
        return summarize(functions, runs=runs, source=f"simulated cycles ({self.cpu.name} at {self.cpu.ghz} GHz)")

    def run(self, lib_path: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
        raise QfaError(f"{self.device.name} is simulated: it estimates time and computes no outputs "
                       "(check outputs on rasp4b-emulated)")

    def close(self) -> None:
        pass

    def __enter__(self) -> SimulatedSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
