"""ArchConfig: the cfg.json round trip, the canonical form, sampling and the extreme subnets."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
from click.testing import CliRunner

from qfa_deploy.arch import ArchConfig, load_arch, sample_arch
from qfa_deploy.cli import cli
from qfa_deploy.errors import QfaError
from qfa_deploy.space import create_space, list_spaces

CIFAR = "qfa-mbv3-cifar10"
SPACES = ["qfa-mbv3-cifar10", "qfa-mbv3-w1.2"]


def test_spaces_registered():
    assert set(SPACES) <= set(list_spaces())


# -- round trip ---------------------------------------------------------------------------------


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("seed", range(5))
def test_json_round_trip(space, seed, tmp_path):
    cfg = sample_arch(space, random.Random(seed))
    text = cfg.to_json()
    again = ArchConfig.from_dict(json.loads(text))
    assert again == cfg
    assert again.to_json() == text
    assert again.digest() == cfg.digest()
    path = tmp_path / "cfg.json"
    path.write_text(text)
    assert load_arch(path, expect_space=space) == cfg
    # the documented layout: one block per line, top-level fields present
    data = json.loads(text)
    assert data["format"] == "qfa-arch" and data["version"] == create_space(space).version and data["space"] == space
    assert len(data["blocks"]) == create_space(space).num_blocks
    assert text.count('{"kernel"') == len(data["blocks"])


@pytest.mark.parametrize("space", SPACES)
def test_round_trip_extremes(space):
    for cfg in (ArchConfig.largest(space), ArchConfig.smallest(space), ArchConfig.largest(space, bits=3)):
        assert ArchConfig.from_dict(cfg.to_dict()) == cfg
        assert ArchConfig.from_dict(json.loads(cfg.canonical_json())) == cfg


def test_format_and_version_may_be_omitted():
    d = sample_arch(CIFAR, random.Random(0)).to_dict()
    del d["format"], d["version"]
    assert ArchConfig.from_dict(d) == sample_arch(CIFAR, random.Random(0))


# -- canonical form --------------------------------------------------------------------------------


def _with_block(cfg: ArchConfig, i: int, kernel: int, expand: int, w: tuple, a: tuple) -> ArchConfig:
    d = cfg.to_dict()
    d["blocks"][i] = {"kernel": kernel, "expand": expand, "w_bits": list(w), "a_bits": list(a)}
    return ArchConfig.from_dict(d)


def test_inactive_blocks_do_not_matter():
    base = sample_arch(CIFAR, random.Random(4))
    base = replace(base, depths=(2, 3, 4, 2, 3))
    inactive = [i for i in range(create_space(CIFAR).num_blocks) if i not in base.active_blocks()]
    assert inactive == [2, 3, 7, 14, 15, 19]
    a = _with_block(base, 3, 7, 6, (4, 4, 4), (4, 3, 2))
    b = _with_block(base, 3, 5, 4, (2, 3, 4), (2, 2, 2))
    b = _with_block(b, 14, 7, 6, (4, 4, 4), (4, 4, 4))
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a.digest() == b.digest() and a.canonical_json() == b.canonical_json()
    assert a.to_json() == b.to_json()
    # inactive entries are reset to the first choice of each list
    sp = create_space(CIFAR)
    for i in inactive:
        assert a.kernel[i] == sp.kernel_choices[0] and a.expand[i] == sp.expand_choices[0]
        assert a.w_bits[i] == a.a_bits[i] == (sp.bit_choices[0],) * 3


def test_active_blocks_do_matter():
    base = replace(sample_arch(CIFAR, random.Random(4)), depths=(2, 3, 4, 2, 3))
    a = _with_block(base, 1, 7, 6, (4, 4, 4), (4, 4, 4))
    for changed in (
        _with_block(base, 1, 5, 6, (4, 4, 4), (4, 4, 4)),
        _with_block(base, 1, 7, 4, (4, 4, 4), (4, 4, 4)),
        _with_block(base, 1, 7, 6, (4, 2, 4), (4, 4, 4)),
        _with_block(base, 1, 7, 6, (4, 4, 4), (4, 4, 3)),
        replace(a, resolution=28 if a.resolution != 28 else 32),
        replace(a, final_a_bits=2 if a.final_a_bits != 2 else 3),
        replace(a, first_w_bits=(2, 3) if a.first_w_bits != (2, 3) else (3, 2)),
    ):
        assert changed != a and changed.digest() != a.digest()


def test_constructor_accepts_lists_and_freezes_them():
    cfg = ArchConfig.largest(CIFAR)
    d = {k: getattr(cfg, k) for k in ("space", "resolution", "final_w_bits", "final_a_bits")}
    listy = ArchConfig(
        depths=list(cfg.depths), kernel=list(cfg.kernel), expand=list(cfg.expand),
        w_bits=[list(w) for w in cfg.w_bits], a_bits=[list(a) for a in cfg.a_bits],
        first_w_bits=list(cfg.first_w_bits), first_a_bits=list(cfg.first_a_bits), **d,
    )
    assert listy == cfg and hash(listy) == hash(cfg)
    with pytest.raises(AttributeError):
        cfg.resolution = 24  # frozen


def test_active_blocks_order():
    cfg = replace(ArchConfig.largest(CIFAR), depths=(2, 4, 3, 2, 2))
    assert cfg.active_blocks() == [0, 1, 4, 5, 6, 7, 8, 9, 10, 12, 13, 16, 17]


# -- sampling -------------------------------------------------------------------------------------


@pytest.mark.parametrize("space", SPACES)
def test_sample_is_deterministic(space):
    a = [sample_arch(space, random.Random(s)) for s in range(10)]
    b = [sample_arch(space, random.Random(s)) for s in range(10)]
    assert a == b
    assert len({c.digest() for c in a}) == 10


def test_sample_covers_every_choice():
    sp = create_space(CIFAR)
    cfgs = [sample_arch(CIFAR, random.Random(s)) for s in range(60)]
    assert {c.resolution for c in cfgs} == set(sp.resolutions)
    assert {d for c in cfgs for d in c.depths} == set(sp.depth_choices)
    assert {c.kernel[i] for c in cfgs for i in c.active_blocks()} == set(sp.kernel_choices)
    assert {c.expand[i] for c in cfgs for i in c.active_blocks()} == set(sp.expand_choices)
    bits = {b for c in cfgs for i in c.active_blocks() for b in c.w_bits[i] + c.a_bits[i]}
    assert bits == set(sp.bit_choices)


def test_sample_restricted_choices():
    cfg = sample_arch(CIFAR, random.Random(1), bit_choices=(3,), resolutions=(28,))
    assert cfg.resolution == 28
    assert cfg == cfg.with_uniform_bits(3, 3)


def _invoke(args: list[str]):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return result


def test_cli_sample_seed_is_deterministic(tmp_path):
    out1 = _invoke(["sample", "--space", CIFAR, "--seed", "7"]).stdout
    out2 = _invoke(["sample", "--space", CIFAR, "--seed", "7"]).stdout
    out3 = _invoke(["sample", "--space", CIFAR, "--seed", "8"]).stdout
    assert out1 == out2 != out3
    assert ArchConfig.from_dict(json.loads(out1)) == sample_arch(CIFAR, random.Random(7))
    _invoke(["sample", "--space", CIFAR, "--seed", "7", "-o", str(tmp_path / "a.json")])
    assert (tmp_path / "a.json").read_text() == out1
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # the atomic writer left no temporary


def test_cli_sample_extremes():
    assert ArchConfig.from_dict(json.loads(_invoke(["sample", "--space", CIFAR, "--max"]).stdout)) == (
        ArchConfig.largest(CIFAR)
    )
    out = _invoke(["sample", "--space", CIFAR, "--min", "--bits", "4"]).stdout
    assert ArchConfig.from_dict(json.loads(out)) == ArchConfig.smallest(CIFAR, bits=4)


# -- extremes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("space", SPACES)
def test_largest_and_smallest(space):
    sp = create_space(space)
    big, small = ArchConfig.largest(space), ArchConfig.smallest(space)
    assert big.resolution == max(sp.resolutions) and small.resolution == min(sp.resolutions)
    assert big.depths == (4,) * sp.num_stages and small.depths == (2,) * sp.num_stages
    assert len(big.active_blocks()) == sp.num_blocks == 20
    assert len(small.active_blocks()) == 2 * sp.num_stages
    assert set(big.kernel) == {7} and set(big.expand) == {6}
    assert {small.kernel[i] for i in small.active_blocks()} == {3}
    assert {small.expand[i] for i in small.active_blocks()} == {3}
    assert big == big.with_uniform_bits(4, 4) and small == small.with_uniform_bits(2, 2)
    assert big.first_w_bits == (4, 4) and big.final_a_bits == 4
    assert small.first_a_bits == (2, 2) and small.final_w_bits == 2
    assert ArchConfig.largest(space, bits=2) == big.with_uniform_bits(2, 2)
    assert ArchConfig.smallest(space, bits=4) == small.with_uniform_bits(4, 4)


def test_short_form():
    s = ArchConfig.smallest(CIFAR).short()
    assert s.startswith("r24 d2,2,2,2,2 | w22a22 | k3e3w222a222 ")
    assert s.endswith("| w2a2") and s.count("k3e3") == 10


# -- validation messages (in process; the CLI's exit-2 path is in test_cli_errors) ---------------


def _bad(edit) -> str:
    d = sample_arch(CIFAR, random.Random(2)).to_dict()
    edit(d)
    with pytest.raises(QfaError) as exc:
        ArchConfig.from_dict(d)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_validation_messages():
    k = "is not one of [3, 5, 7]"
    assert _bad(lambda d: d["blocks"][3].update(kernel=9)) == f"blocks[3].kernel = 9 {k}"
    assert _bad(lambda d: d["blocks"][5].update(expand=5)) == "blocks[5].expand = 5 is not one of [3, 4, 6]"
    assert _bad(lambda d: d["blocks"][0].update(kernel=True)) == f"blocks[0].kernel = True {k}"
    assert _bad(lambda d: d["blocks"][0].update(kernel=7.0)) == f"blocks[0].kernel = 7.0 {k}"
    assert _bad(lambda d: d["blocks"][2]["a_bits"].__setitem__(2, 8)) == (
        "blocks[2].a_bits[2] = 8 is not one of [2, 3, 4]"
    )
    assert _bad(lambda d: d["blocks"][2].update(w_bits=[4, 4])) == (
        "blocks[2].w_bits must be a list of 3 entries, got 2 entries"
    )
    assert _bad(lambda d: d["final_expand"].update(w_bits=1)) == (
        "final_expand.w_bits = 1 is not one of [2, 3, 4]"
    )
    assert _bad(lambda d: d["first_block"]["w_bits"].__setitem__(0, 5)) == (
        "first_block.w_bits[0] = 5 is not one of [2, 3, 4]"
    )
    assert _bad(lambda d: d.update(depths=[4, 4, 4, 4, 1])) == "depths[4] = 1 is not one of [2, 3, 4]"
    assert _bad(lambda d: d.update(depths="44444")) == "depths = '44444' must be a list"
    assert _bad(lambda d: d.update(resolution=30)) == "resolution = 30 is not one of [24, 28, 32]"
    assert _bad(lambda d: d.update(space=3)) == "space = 3 must be a string"
    assert _bad(lambda d: d.update(format="onnx")) == "format = 'onnx' is not 'qfa-arch'"
    assert "unknown space 'x'" in _bad(lambda d: d.update(space="x"))
    assert _bad(lambda d: d.pop("final_expand")) == "missing field 'final_expand'"
    assert _bad(lambda d: d["blocks"][1].update(se=True)).startswith("blocks[1] must be an object with")
    assert _bad(lambda d: d["first_block"].pop("a_bits")).startswith("first_block must be an object")
    assert "unknown field 'extra'" in _bad(lambda d: d.update(extra=1))


def test_expect_space():
    d = ArchConfig.largest("qfa-mbv3-w1.2").to_dict()
    with pytest.raises(QfaError, match="'qfa-mbv3-w1.2'.*'qfa-mbv3-cifar10'"):
        ArchConfig.from_dict(d, expect_space=CIFAR)
