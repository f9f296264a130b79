"""``convert ofa-checkpoint``: OFA's float supernet (``ofa_mbv3_d234_e346_k357_w1.2``) -> a ``qfa-mbv3-w1.2``
warm start whose float subnets compute OFA's forward, its quantizers initialised as the seed does.

The fixture (tests/data/ofa_fixture/fixture.pt, made by scripts/make_ofa_fixture.py from OFA's own
code and the seed's) holds the key/shape manifest of OFA's W1.2 state dict, the BN statistics OFA's
code computed, two inputs (128 and 160 px), three subnets with OFA's eval-mode logits, and every
quantizer tensor of the seed's phase-0 start from that state dict. The weights are regenerated here
by the script's ``generated_tensor``.

Tolerance: qfa-deploy's float forward (bits None: the float phase of training) equals OFA's to
float32 re-association, measured at most 3.1e-6 on logits of magnitude ~1; the test allows 2e-5.
"""

from __future__ import annotations

import pickle
import re
import subprocess
import sys

import pytest
import torch
from convert_helpers import ROOT, fixture_maker, rebuild_state, run_cli

from qfa_deploy.arch import ArchConfig
from qfa_deploy.checkpoint import load_supernet

FIXTURE = ROOT / "tests/data/ofa_fixture/fixture.pt"
SPACE = "qfa-mbv3-w1.2"
TOLERANCE = 2e-5


@pytest.fixture(scope="module")
def fixture():
    if not FIXTURE.is_file():
        pytest.skip("no OFA fixture: scripts/make_ofa_fixture.py OFA_CHECKOUT makes it")
    return torch.load(FIXTURE, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def ofa_state(fixture):
    """OFA's state dict (its current key layout), rebuilt: regenerated weights plus OFA-computed statistics."""
    return rebuild_state(fixture, fixture_maker("make_ofa_fixture"))


@pytest.fixture(scope="module")
def converted(ofa_state, tmp_path_factory):
    """The CLI's conversion of the state dict saved in the released file's layout."""
    folder = tmp_path_factory.mktemp("ofa")
    torch.save({"state_dict": fixture_maker("make_ofa_fixture").released_layout(ofa_state)}, folder / "ofa_mbv3_like")
    code, _, err = run_cli("convert", "ofa-checkpoint", folder / "ofa_mbv3_like", "-o", folder / "fp.pt")
    assert code == 0, err
    return folder / "fp.pt"


def _arch(subnet: dict, resolution: int) -> ArchConfig:
    spec = ArchConfig.largest(SPACE).to_dict()
    spec["resolution"], spec["depths"] = resolution, subnet["d"]
    for block, k, e in zip(spec["blocks"], subnet["ks"], subnet["e"], strict=True):
        block["kernel"], block["expand"] = k, e
    return ArchConfig.from_dict(spec)


def _float_forward(net, fixture) -> list[dict]:
    """Every fixture subnet on every input, in qfa-deploy's float mode (as training's float phase runs)."""
    out = []
    for name, subnet, row in zip(fixture["names"], fixture["subnets"], fixture["logits"], strict=True):
        for x, ref in zip(fixture["inputs"], row, strict=True):
            x = x.float()
            net.set_active(_arch(subnet, x.shape[-1]), quantized=False)
            net.eval()
            with torch.no_grad():
                y = net(x)
            out.append({"name": name, "resolution": x.shape[-1], "max_dlogit": float((y - ref).abs().max()),
                        "top1_agree": int((y.argmax(1) == ref.argmax(1)).sum()), "n": len(x)})
    return out


def test_float_subnets_compute_ofas_forward(converted, fixture):
    net = load_supernet(converted)
    results = _float_forward(net, fixture)
    print("float forward against OFA:", results)
    assert len(results) == 6
    for r in results:
        assert r["max_dlogit"] <= TOLERANCE and r["top1_agree"] == r["n"], r


def test_a_wrong_mapping_fails(converted, fixture):
    """The kernel transforms stored as OFA stores them (untransposed, a wrong mapping) break equality on
    the subnet with 3x3 and 5x5 kernels; the largest (7x7 only) does not use them."""
    net = load_supernet(converted)
    with torch.no_grad():
        for block in net.blocks:
            for t in block.depthwise.transforms.values():
                t.copy_(t.t().clone())
    results = {(r["name"], r["resolution"]): r for r in _float_forward(net, fixture)}
    print("untransposed kernel transforms:", results)
    assert results[("random", 128)]["max_dlogit"] > 1e-3
    assert results[("largest", 128)]["max_dlogit"] <= TOLERANCE


def test_both_key_layouts_give_the_same_file(converted, ofa_state, tmp_path):
    """OFA's current code's keys (blocks.N.conv.*, a bare state dict) convert like the released file's."""
    torch.save(ofa_state, tmp_path / "current.pth")
    code, _, err = run_cli("convert", "ofa-checkpoint", tmp_path / "current.pth", "-o", tmp_path / "fp.pt")
    assert code == 0, err
    a = torch.load(converted, weights_only=True)["model"]
    b = torch.load(tmp_path / "fp.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- quantizers: as the seed's phase 0 initialises them (recorded from its code) -------------------

_SEED_CONV = [  # seed conv prefix -> qfa-deploy conv prefix
    (r"first_conv\.conv", "stem"),
    (r"blocks\.0\.mobile_inverted_conv\.depth_conv\.conv\.([wa])_quantizers\.3", "first_block.depthwise"),
    (r"blocks\.0\.mobile_inverted_conv\.point_linear\.conv", "first_block.project"),
    (r"blocks\.(\d+)\.mobile_inverted_conv\.inverted_bottleneck\.conv", "blocks.{n}.expand"),
    (r"blocks\.(\d+)\.mobile_inverted_conv\.depth_conv\.conv\.([wa])_quantizers\.(\d)",
     "blocks.{n}.depthwise.per_kernel.{k}"),
    (r"blocks\.(\d+)\.mobile_inverted_conv\.point_linear\.conv", "blocks.{n}.project"),
    (r"final_expand_layer\.conv", "final_expand"),
    (r"feature_mix_layer\.conv", "feature_mix"),
    (r"classifier\.linear", "classifier"),
]
_SEED_TENSOR = {  # seed tensor -> (qfa-deploy quantizer, tensor)
    "w_quantizer.scale": ("weight_quant", "step"),
    "a_quantizer.scale": ("act_quant", "scale_param"),
    "a_quantizer.offset": ("act_quant", "offset"),
    "a_quantizer.observer.running_min": ("act_quant", "running_min"),
    "a_quantizer.observer.running_max": ("act_quant", "running_max"),
    "a_quantizer.observer.num_batches_tracked": ("act_quant", "num_batches_tracked"),
}


def _qfa_place(seed_key: str, net) -> tuple[str, int] | None:
    """Where qfa-deploy keeps the seed's quantizer tensor ``seed_key`` (key, index of the bit), or None
    for a quantizer no qfa-deploy subnet has (the seed's unused 8-bit and float choices)."""
    found = re.fullmatch(r"(.*?)\.?([wa])_quantizers?(?:\.\d)?\.quantizers\.(\d+)\.(.*)", seed_key)
    prefix_full, kind, bit, rest = seed_key, found.group(2), int(found.group(3)), found.group(4)
    for pattern, target in _SEED_CONV:
        m = re.match(pattern + r"\.", prefix_full)
        if m is None:
            continue
        groups = m.groups()
        n = int(groups[0]) - 1 if groups and groups[0] and groups[0].isdigit() else None
        k = groups[-1] if target.endswith("{k}") else None
        conv = target.format(n=n, k=k)
        quant, tensor = _SEED_TENSOR[f"{kind}_quantizer.{rest}"]
        module = net.get_submodule(f"{conv}.{quant}")
        if bit not in module.bit_choices:
            return None
        return f"{conv}.{quant}.{tensor}", module.bit_choices.index(bit)
    raise AssertionError(f"unmapped seed quantizer {seed_key}")


def test_quantizers_start_as_the_seeds_warm_start(converted, fixture):
    """Every quantizer value of qfa-deploy's file equals the seed's after its own start from the same
    OFA file: LSQ steps (incl. the per-kernel-size depthwise ones on the transformed kernels) to float
    rounding, BatchQuant alpha/beta and observers exactly (no range yet)."""
    if "seed_init" not in fixture:
        pytest.skip("fixture made without --seed-checkout")
    net = load_supernet(converted)
    state = torch.load(converted, weights_only=True)["model"]
    seen, steps, worst = set(), 0, 0.0
    for key, value in zip(fixture["seed_init"]["keys"], fixture["seed_init"]["values"].tolist(), strict=True):
        place = _qfa_place(key, net)
        if place is None:
            continue
        name, i = place
        ours = float(state[name].reshape(-1)[i])
        if name.endswith(".step"):
            steps += 1
            worst = max(worst, abs(ours - value) / value)
        else:
            assert ours == value, (key, name, ours, value)
        seen.add((name, i))
    print(f"{len(seen)} quantizer values compared, {steps} LSQ steps, worst relative difference {worst:.2e}")
    assert worst <= 1e-6
    quant_values = {(k, i) for k, v in state.items() if "_quant." in k for i in range(v.numel())}
    # every qfa-deploy quantizer value has a seed counterpart (the 8-bit stem's: the seed's first conv
    # runs in float, yet its code initialises 8-bit quantizers for it the same way)
    assert quant_values == seen, sorted(quant_values ^ seen)[:5]


def test_init_from_accepts_the_file(converted, tmp_path):
    """``train --init-from`` takes it as a warm start (the converter's ``warm_start`` field) for either
    activation quantizer: the LSQ steps are kept when the run starts quantized, ``--fp-epochs 0``, as the
    seed's phase 0 does; with BatchQuant everything loads, with LSQ activations those start fresh. A
    finished checkpoint of the same content without the field keeps the activation-quantizer check."""
    from qfa_deploy.errors import QfaError
    from qfa_deploy.nn.supernet import QFASupernet
    from qfa_deploy.quant import LSQAct
    from qfa_deploy.train import TrainConfig, _init_weights

    payload = torch.load(converted, weights_only=True)
    assert isinstance(payload["warm_start"], str) and "train_config" not in payload
    saved = payload["model"]

    def config(path, act):
        return TrainConfig(space=SPACE, out="unused", init_from=str(path), fp_epochs=0, act_quantizer=act)

    net = QFASupernet(SPACE)
    assert _init_weights(net, config(converted, "batchquant"), 10)
    state = net.state_dict()
    assert all(torch.equal(state[k], saved[k]) for k in saved)

    lsq = QFASupernet(SPACE, act_quantizer="lsq")
    fresh = {k: v.clone() for k, v in lsq.state_dict().items() if ".act_quant." in k}
    assert _init_weights(lsq, config(converted, "lsq"), 10)
    state = lsq.state_dict()
    assert all(torch.equal(state[k], saved[k]) for k in saved if ".act_quant." not in k)  # incl. the LSQ steps
    assert fresh and all(torch.equal(state[k], v) for k, v in fresh.items())
    acts = [m for m in lsq.modules() if isinstance(m, LSQAct)]
    assert acts and not any(bool(m.initialised) for m in acts)  # set from the first training batch

    released = {k: v for k, v in payload.items() if k != "warm_start"}
    torch.save(released, tmp_path / "released.pt")
    with pytest.raises(QfaError, match="trained with 'batchquant' activation quantizers, this run uses 'lsq'"):
        _init_weights(QFASupernet(SPACE, act_quantizer="lsq"), config(tmp_path / "released.pt", "lsq"), 10)
    assert _init_weights(QFASupernet(SPACE), config(tmp_path / "released.pt", "batchquant"), 10)


@pytest.mark.slow
def test_one_training_step_from_the_file(converted, tmp_path):
    """The whole CLI: one quantized step of the ImageNet space (224 px) from the converted warm start."""
    import json

    from tests.test_imagefolder import make_tree

    root = make_tree(tmp_path / "imagenet", classes=1000, train_per_class=1, val_per_class=1)
    run = tmp_path / "run"
    code = "from qfa_deploy.cli import main; main()"
    done = subprocess.run(
        [sys.executable, "-c", code, "train", "--space", SPACE, "--data", str(root), "--out", str(run),
         "--init-from", str(converted), "--fp-epochs", "0", "--q-epochs", "1", "--batch-size", "2",
         "--max-steps", "1", "--num-random", "1", "--threads", "2", "--data-workers", "1"],
        capture_output=True, text=True, timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    steps = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    first = next(s for s in steps if "loss_largest" in s)
    assert first["phase"] == "quant" and first["loss_largest"] == first["loss_largest"]  # finite, quantized
    assert (run / "checkpoint.pt").is_file()


# ---- hostile inputs: one line, exit 2, no output file (nor staging litter) --------------------------


def _refused(tmp_path, source, *needles):
    out = tmp_path / "out.pt"
    code, _, err = run_cli("convert", "ofa-checkpoint", source, "-o", out)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.pt")] == []
    return err


def test_foreign_files(tmp_path):
    torch.save({"state_dict": {"features.0.weight": torch.zeros(3)}}, tmp_path / "foreign.pth")
    _refused(tmp_path, tmp_path / "foreign.pth", "not an OFAMobileNetV3 state dict")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    _refused(tmp_path, tmp_path / "list.pth", "no state_dict")
    seed_like = {"blocks.1.mobile_inverted_conv.depth_conv.conv.w_quantizers.3.quantizers.2.scale": torch.ones(1),
                 "blocks.1.mobile_inverted_conv.depth_conv.conv.conv.weight": torch.zeros(144, 1, 7, 7)}
    torch.save({"state_dict": seed_like}, tmp_path / "b234_ps.pth")
    _refused(tmp_path, tmp_path / "b234_ps.pth", "quantized seed supernet", "convert qfa-checkpoint")


def test_missing_key(ofa_state, tmp_path):
    state = dict(ofa_state)
    del state["blocks.7.conv.depth_conv.bn.bn.running_var"]
    torch.save({"state_dict": state}, tmp_path / "missing.pth")
    _refused(tmp_path, tmp_path / "missing.pth", "missing key blocks.7.conv.depth_conv.bn.bn.running_var")


def test_wrong_shape(ofa_state, tmp_path):
    state = dict(ofa_state)
    state["blocks.2.conv.point_linear.conv.conv.weight"] = torch.zeros(8, 8, 1, 1)
    torch.save({"state_dict": state}, tmp_path / "shape.pth")
    _refused(tmp_path, tmp_path / "shape.pth", "blocks.2.conv.point_linear.conv.conv.weight", "shape")
    state = dict(ofa_state)
    state["first_conv.conv.weight"] = torch.zeros(16, 3, 3, 3)  # OFA's W1.0 supernet
    torch.save({"state_dict": state}, tmp_path / "w10.pth")
    _refused(tmp_path, tmp_path / "w10.pth", "another width", "W1.2")


def test_unknown_key_and_mixed_layouts(ofa_state, tmp_path):
    state = dict(ofa_state)
    state["blocks.3.conv.extra.weight"] = torch.zeros(2)
    torch.save({"state_dict": state}, tmp_path / "extra.pth")
    _refused(tmp_path, tmp_path / "extra.pth", "unknown key blocks.3.conv.extra.weight")
    state = dict(ofa_state)
    key = "blocks.4.conv.point_linear.conv.conv.weight"
    state[key.replace(".conv.", ".mobile_inverted_conv.", 1)] = state[key]
    torch.save({"state_dict": state}, tmp_path / "mixed.pth")
    _refused(tmp_path, tmp_path / "mixed.pth", "mixes OFA's two key layouts")


def test_non_finite_weights(ofa_state, tmp_path):
    state = dict(ofa_state)
    state["classifier.linear.bias"] = torch.full_like(state["classifier.linear.bias"], float("nan"))
    torch.save({"state_dict": state}, tmp_path / "nan.pth")
    _refused(tmp_path, tmp_path / "nan.pth", "classifier.linear.bias", "non-finite")


def test_truncated_code_and_qfa_files(ofa_state, tmp_path, converted):
    good = tmp_path / "good.pth"
    torch.save({"state_dict": {k: v for k, v in list(ofa_state.items())[:50]}}, good)
    (tmp_path / "cut.pth").write_bytes(good.read_bytes()[:5000])
    _refused(tmp_path, tmp_path / "cut.pth", "not a readable checkpoint")
    (tmp_path / "code.pth").write_bytes(pickle.dumps({"state_dict": _Evil()}))
    _refused(tmp_path, tmp_path / "code.pth", "not a readable checkpoint")
    _refused(tmp_path, converted, "already a qfa-deploy checkpoint")
    _refused(tmp_path, tmp_path / "absent.pth", "no such checkpoint")


def test_existing_output_needs_force(ofa_state, tmp_path):
    torch.save(ofa_state, tmp_path / "ofa.pth")
    out = tmp_path / "fp.pt"
    out.write_bytes(b"keep")
    code, _, err = run_cli("convert", "ofa-checkpoint", tmp_path / "ofa.pth", "-o", out)
    assert code == 2 and "exists" in err and out.read_bytes() == b"keep", err
    code, _, err = run_cli("convert", "ofa-checkpoint", tmp_path / "ofa.pth", "-o", out, "--force")
    assert code == 0 and torch.load(out, weights_only=True)["space"] == SPACE, err


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))
