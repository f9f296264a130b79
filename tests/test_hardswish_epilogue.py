"""An integer conv's hard-swish epilogue as three FMAs (targets.cpu.hardswish_epilogue): the proof and the
compiled codes."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
from deploy_helpers import compile_x86_beside_onnxruntime
from epilogue_models import one_conv_model

from qfa_deploy.deploy.targets.cpu.hardswish_epilogue import HardSwishEpilogue, _proven, hardswish_codes

F32 = np.float32


def _random_epilogue(rng, units: int, multiplier=(0.001, 0.05)) -> HardSwishEpilogue:
    scale = float(rng.uniform(0.05, 0.4))
    return HardSwishEpilogue(
        multiplier=rng.uniform(*multiplier, units).astype(F32), bias=(2 * rng.standard_normal(units)).astype(F32),
        offset=3.0, ramp=(0.0, 6.0), divisor=6.0, shift=np.full(units, rng.uniform(-0.1, 0.1), F32),
        clip=(-scale, 15 * scale), scale=scale, zero_point=np.full(units, 1.0, F32), code_range=(0, 255),
    )


def test_proven_forms_give_the_graphs_codes():
    """Where the proof says equal, the form equals the graph on dense y around the dip and random y."""
    rng = np.random.default_rng(0)
    epilogue = _random_epilogue(rng, 64)
    form, proven = hardswish_codes(epilogue)
    assert proven.all()
    y = np.concatenate([np.arange(-30000, 30001), rng.integers(-(2**24), 2**24, 20000)]).astype(np.float64)
    units = np.repeat(np.arange(64)[:, None], y.size, axis=1)
    ys = np.broadcast_to(y, units.shape)
    np.testing.assert_array_equal(form.codes(ys, units), epilogue.codes(ys, units))


def test_the_proof_rejects_a_form_that_differs_at_one_step():
    """A form whose offset moved by a quarter of a code differs near every step: refused; moved back, proven."""
    epilogue = _random_epilogue(np.random.default_rng(1), 8)
    form, proven = hardswish_codes(epilogue)
    assert proven.all()
    moved = form.k.copy()
    moved[2] += F32(0.25)
    refused = _proven(epilogue, replace(form, k=moved))
    assert not refused[2] and refused[np.arange(8) != 2].all()


def test_negative_multipliers_and_long_dips_are_not_proven():
    """A negative multiplier breaks the monotone parts; 8-bit-like multipliers make the dip too long to
    enumerate (every unit refused rather than an hour's proof)."""
    epilogue = _random_epilogue(np.random.default_rng(2), 8)
    multiplier = epilogue.multiplier.copy()
    multiplier[5] = -multiplier[5]
    _form, proven = hardswish_codes(replace(epilogue, multiplier=multiplier))
    assert not proven[5] and proven[np.arange(8) != 5].all()
    tiny = _random_epilogue(np.random.default_rng(3), 64, multiplier=(1e-6, 2e-6))
    assert not hardswish_codes(tiny)[1].any()


def test_compiled_hardswish_epilogue_equals_onnxruntime_on_every_code(tmp_path, caplog):
    """The integer schedule folds the hard-swish epilogue (log) and its codes equal onnxruntime's for
    every input code."""
    onnx_path, image = one_conv_model(tmp_path / "hardswish.onnx", "hardswish")
    got, want, line = compile_x86_beside_onnxruntime(tmp_path, onnx_path, image, caplog, "hard-swish epilogues")
    assert re.search(r"(\d+) integer convs", line).group(1) == "1", line
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want)) > 40  # the dip, the ramp and the line all met
