"""An integer conv's epilogue as one FMA (targets.cpu.affine_epilogue): the proof's parts and the compiled codes."""

from __future__ import annotations

import re
from fractions import Fraction

import numpy as np
import pytest
from deploy_helpers import compile_x86_beside_onnxruntime
from epilogue_models import one_conv_model

from qfa_deploy.deploy.targets.cpu.affine_epilogue import Epilogue, affine_codes, fma_float32

F32 = np.float32


def _exact_fma(x: int, y: F32, z: F32) -> F32:
    """fma rounded to float32 from the exact rational value (round half to even)."""
    value = Fraction(x) * Fraction(float(y)) + Fraction(float(z))
    guess = F32(float(value))
    candidates = [guess, np.nextafter(guess, F32(-np.inf)), np.nextafter(guess, F32(np.inf))]
    return min(candidates, key=lambda c: (abs(Fraction(float(c)) - value), int(c.view(np.int32)) & 1))


def test_fma_is_correctly_rounded_halfway_cases_included():
    rng = np.random.default_rng(0)
    x = rng.integers(-(2**24), 2**24, 3000).astype(np.float64)
    y = (rng.standard_normal(3000) * 10.0 ** rng.integers(-6, 3, 3000)).astype(F32)
    z = (rng.standard_normal(3000) * 10.0 ** rng.integers(-6, 6, 3000)).astype(F32)
    # x * 0.5 for an odd x in [2^24, 2^25) lies halfway between two float32s; a tiny addend decides
    x = np.concatenate([x, [2**24 + 1] * 3, [2**24 + 3] * 3])
    y = np.concatenate([y, [F32(0.5)] * 6])
    z = np.concatenate([z, [F32(2.0**-30), F32(-(2.0**-30)), F32(0)] * 2])
    got = fma_float32(x, y, z)
    want = np.array([_exact_fma(int(a), b, c) for a, b, c in zip(x, y, z, strict=True)], F32)
    np.testing.assert_array_equal(got, want)
    assert got[-6] == F32(2**23 + 1) and got[-5] == F32(2**23) and got[-4] == F32(2**23)  # up, down, tie to even


def _random_epilogue(rng, channels: int, relu: bool, shift: bool) -> Epilogue:
    scale = float(rng.uniform(0.02, 0.5))
    return Epilogue(
        multiplier=(rng.uniform(0.001, 0.05, channels)).astype(F32),
        bias=rng.standard_normal(channels).astype(F32),
        relu=relu,
        shift=np.full(channels, rng.uniform(-0.1, 0.1) if shift else 0.0, F32),
        clip=(float(-0.5 * scale * 3), float(scale * 12)),
        scale=scale,
        zero_point=np.full(channels, 3.0, F32),
        code_range=(0, 255),
    )


@pytest.mark.parametrize("relu, shift", [(True, True), (True, False), (False, True)])
def test_proven_forms_give_the_graphs_codes(relu, shift):
    """Where the proof says equal, the FMA form equals the graph's epilogue on dense and random y."""
    rng = np.random.default_rng(int(relu) * 2 + int(shift))
    epilogue = _random_epilogue(rng, 24, relu, shift)
    form, proven = affine_codes(epilogue)
    assert proven.all()
    y = np.concatenate([np.arange(-20000, 20001), rng.integers(-(2**24), 2**24, 20000)]).astype(np.float64)
    ys = np.tile(y, (24, 1))
    np.testing.assert_array_equal(form.codes(ys), epilogue.codes(ys))


def test_a_negative_multiplier_is_not_proven():
    epilogue = _random_epilogue(np.random.default_rng(5), 8, True, False)
    multiplier = epilogue.multiplier.copy()
    multiplier[3] = -multiplier[3]
    _form, proven = affine_codes(Epilogue(multiplier, *[getattr(epilogue, f) for f in
                                                        ("bias", "relu", "shift", "clip", "scale", "zero_point",
                                                         "code_range")]))
    assert not proven[3] and proven[np.arange(8) != 3].all()


def test_compiled_fma_epilogue_equals_onnxruntime_on_every_code(tmp_path, caplog):
    """The integer schedule folds the epilogue (log) and its codes equal onnxruntime's for every input
    code, ties of round-half-to-even included."""
    onnx_path, image = one_conv_model(tmp_path / "affine.onnx", "relu")
    got, want, line = compile_x86_beside_onnxruntime(tmp_path, onnx_path, image, caplog, "affine epilogues")
    assert re.search(r"(\d+) integer convs", line).group(1) == "1", line
    np.testing.assert_array_equal(got, want)
    y = (np.arange(256) - 7).astype(np.float64)
    assert np.array_equal(want[0, 0].reshape(-1), np.clip(np.rint(y * 0.5 + 0.0625), 0, 15))  # ties at odd y


def test_position_dependent_bias_is_proven_per_distinct_unit():
    """A border bias map (few distinct values per channel over many positions): the form proven on the
    distinct units and spread back equals the form proven unit by unit."""
    from qfa_deploy.deploy.targets.cpu.affine_epilogue import _proven_form

    rng = np.random.default_rng(7)
    per_channel = _random_epilogue(rng, 6, True, True)
    positions = 64
    border = rng.standard_normal((6, 3)).astype(F32)[:, rng.integers(0, 3, positions)]  # 3 values a channel
    units = Epilogue(np.repeat(per_channel.multiplier, positions), border.reshape(-1), True,
                     np.repeat(per_channel.shift, positions), per_channel.clip, per_channel.scale,
                     np.repeat(per_channel.zero_point, positions), per_channel.code_range)
    spread, proven = _proven_form(units)
    direct, proven_direct = affine_codes(units)
    np.testing.assert_array_equal(proven, proven_direct)
    for field in ("a", "b", "low", "high"):
        np.testing.assert_array_equal(getattr(spread, field), getattr(direct, field))
