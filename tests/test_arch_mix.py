"""Feature-mix bits: chosen per subnet in ``qfa-mbv3-w1.2`` (space version 2), fixed in CIFAR-10."""

from __future__ import annotations

import json
import logging
import random
from dataclasses import replace

import numpy as np
import pytest

from qfa_deploy.arch import ArchConfig, sample_arch
from qfa_deploy.errors import QfaError
from qfa_deploy.metrics import subnet_cost
from qfa_deploy.nn.supernet import QFASupernet
from qfa_deploy.search.cost import CostModel
from qfa_deploy.search.genome import GenomeSpace
from qfa_deploy.space import create_space

W12, CIFAR = "qfa-mbv3-w1.2", "qfa-mbv3-cifar10"


def test_spaces_say_which_feature_mix_is_elastic():
    assert create_space(W12).elastic_mix and create_space(W12).version == 2
    assert not create_space(CIFAR).elastic_mix and create_space(CIFAR).mix_choices == (8,)
    # 9 (w, a) pairs for the feature mix on top of what version 1 counted
    assert create_space(W12).num_subnets() % 9 == 0


def test_cifar_configs_keep_version_1_and_their_form():
    cfg = sample_arch(CIFAR, random.Random(3))
    d = cfg.to_dict()
    assert d["version"] == 1 and "feature_mix" not in d
    assert (cfg.mix_w_bits, cfg.mix_a_bits) == (8, 8)
    with pytest.raises(QfaError, match="unknown field 'feature_mix'"):
        ArchConfig.from_dict({**d, "feature_mix": {"w_bits": 8, "a_bits": 8}})
    with pytest.raises(QfaError, match=r"feature_mix.w_bits = 4 is not one of \[8\]"):
        replace(cfg, mix_w_bits=4)


def test_w12_configs_name_the_feature_mix_bits():
    cfg = replace(ArchConfig.largest(W12), mix_w_bits=2, mix_a_bits=3)
    d = cfg.to_dict()
    assert d["version"] == 2 and d["feature_mix"] == {"w_bits": 2, "a_bits": 3}
    assert ArchConfig.from_dict(json.loads(cfg.to_json())) == cfg
    assert cfg.digest() != ArchConfig.largest(W12).digest()
    assert cfg.short().endswith("m w2a3")
    with pytest.raises(QfaError, match="missing field 'feature_mix'"):
        ArchConfig.from_dict({k: v for k, v in d.items() if k != "feature_mix"})
    with pytest.raises(QfaError, match=r"feature_mix.a_bits = 8 is not one of \[2, 3, 4\]"):
        ArchConfig.from_dict({**d, "feature_mix": {"w_bits": 2, "a_bits": 8}})
    with pytest.raises(QfaError, match=r"feature_mix.w_bits = None is not one of"):
        replace(cfg, mix_w_bits=None)
    assert ArchConfig.smallest(W12).mix_w_bits == 2 and ArchConfig.largest(W12, bits=3).mix_a_bits == 3
    assert cfg.with_uniform_bits(3, 2).mix_w_bits == 3


def test_version_1_w12_config_loads_with_a_note(caplog):
    d = ArchConfig.smallest(W12).to_dict()
    del d["feature_mix"]
    d["version"] = 1
    with caplog.at_level(logging.WARNING, logger="qfa_deploy.arch"):
        cfg = ArchConfig.from_dict(d)
    assert (cfg.mix_w_bits, cfg.mix_a_bits) == (4, 4)
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1 and "version-1" in notes[0] and "\n" not in notes[0]
    with pytest.raises(QfaError, match="unknown field 'feature_mix'"):
        ArchConfig.from_dict({**d, "feature_mix": {"w_bits": 2, "a_bits": 2}})
    with pytest.raises(QfaError, match="this tool reads versions 1, 2"):
        ArchConfig.from_dict({**d, "version": 3})


def test_sampling_draws_the_feature_mix_bits_and_keeps_cifar_streams():
    seen = {(c.mix_w_bits, c.mix_a_bits) for c in (sample_arch(W12, random.Random(s)) for s in range(40))}
    assert len(seen) > 4
    # CIFAR-10 configs, their random streams and digests are those of version 1 (digests before the change)
    assert [sample_arch(CIFAR, random.Random(s)).digest() for s in (0, 5)] == ["38cf04bd9acbd1f2", "82d6fd26763cf355"]
    assert sample_arch(W12, random.Random(1)).kernel[:4] == (5, 5, 7, 5)  # drawn as before, mix bits last


def test_supernet_and_extract_run_the_chosen_feature_mix_bits():
    net = QFASupernet(W12)
    cfg = replace(ArchConfig.smallest(W12), mix_w_bits=3, mix_a_bits=2)
    net.set_active(cfg)
    assert (net.feature_mix.weight_quant.bits, net.feature_mix.act_quant.bits) == (3, 2)
    assert net.stem.weight_quant.bits == 8 and net.classifier.act_quant.bits == 8
    from qfa_deploy.extract import extract

    sub = extract(net, cfg)
    assert sub.feature_mix.weight_quant.bit_choices == (3,) and sub.feature_mix.act_quant.bit_choices == (2,)


def test_genome_and_cost_model_carry_the_feature_mix_bits():
    g = GenomeSpace(W12)
    assert g.length == GenomeSpace(CIFAR).length + 2  # same skeleton, plus (w, a) of the feature mix
    assert "mix_bits" in g.slices and "mix_bits" not in GenomeSpace(CIFAR).slices
    cfgs = [replace(sample_arch(W12, random.Random(s)), resolution=128) for s in range(3)]
    G = g.encode(cfgs)
    assert [g.decode(row) for row in G] == cfgs
    model = CostModel(g)
    net = QFASupernet(W12)
    for cfg, macs, bitops in zip(cfgs, model.macs(G), model.bitops(G), strict=True):
        cost = subnet_cost(cfg, net)
        assert cost.macs == int(macs) and cost.bitops == pytest.approx(float(bitops), rel=1e-12)
    lo = replace(cfgs[0], mix_w_bits=2, mix_a_bits=2)
    hi = replace(cfgs[0], mix_w_bits=4, mix_a_bits=4)
    b = model.bitops(g.encode([lo, hi]))
    mix = create_space(W12).final_expand_width * create_space(W12).feature_mix_width
    assert np.isclose(b[1] - b[0], mix * (16 - 4) / 64)
