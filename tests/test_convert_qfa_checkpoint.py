"""``convert qfa-checkpoint``: the seed's supernet state dict -> a ``qfa-mbv3-w1.2`` checkpoint whose
subnets compute the seed's forward.

The fixture (tests/data/seed_qfa/fixture.pt, made by scripts/make_seed_fixture.py from the seed's own
code) holds the seed state dict's key/shape manifest, the tensors the seed's code computed (LSQ
steps, BN and per-bit BatchQuant statistics), the input, three genes and the seed's logits in eval
mode, and the codes of the seed's forward that lay within ``tie_margin`` of a rounding boundary. The
input tensors (weights, BN affine, kernel matrices, BatchQuant alpha/beta) are regenerated here by the
script's ``generated_tensor`` from their key and shape.

Tolerance: with the seed's float stem (``float_stem``) and the seed's code forced at its near-ties
only, logits agree to 1e-5 (logits are ~0.5; what is left is float32 re-association: the integer
conv with folded BN against the seed's float conv then BN, measured ~2e-7). Without forcing, a value
that float re-association moves across a rounding boundary changes one code, and at 2-4 bits that
cascades: those codes are counted and reported, not hidden.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from convert_helpers import ROOT, fixture_maker, rebuild_state, run_cli

import qfa_deploy.nn.integer_conv as integer_conv_module
from qfa_deploy.checkpoint import load_supernet
from qfa_deploy.convert.qfa_gene import gene_to_arch
from qfa_deploy.quant import BatchQuant

FIXTURE = ROOT / "tests/data/seed_qfa/fixture.pt"
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def fixture():
    if not FIXTURE.is_file():
        pytest.skip("no seed fixture: scripts/make_seed_fixture.py SEED_CHECKOUT makes it")
    return torch.load(FIXTURE, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def seed_state(fixture):
    """The seed's state dict, rebuilt: regenerated inputs plus the seed-computed tensors."""
    return rebuild_state(fixture, fixture_maker("make_seed_fixture"))


@pytest.fixture(scope="module")
def converted(seed_state, tmp_path_factory):
    folder = tmp_path_factory.mktemp("seed")
    torch.save({"state_dict": seed_state}, folder / "b234_like.pth")  # the released file's layout
    code, _, err = run_cli("convert", "qfa-checkpoint", folder / "b234_like.pth", "-o", folder / "supernet.pt")
    assert code == 0, err
    return folder / "supernet.pt"


class _Codes:
    """Wraps ``quantize_codes`` (what every eval-mode conv quantizes its input with): counts the calls of
    one forward and, at the seed's near-tie positions, compares (and optionally forces) the codes."""

    def __init__(self, monkeypatch, ties: dict, force: bool, stem_quantized: bool) -> None:
        self.original = integer_conv_module.quantize_codes
        self.ties, self.force = ties, force
        self.call, self.flips, self.codes = -1 if stem_quantized else 0, 0, 0  # the seed has no stem call
        monkeypatch.setattr(integer_conv_module, "quantize_codes", self)

    def __call__(self, x, conv):
        q = self.original(x, conv)
        here = self.ties["call"] == self.call
        self.call += 1
        if self.call == 0:  # the 8-bit stem's input: not quantized in the seed
            return q
        self.codes += q.numel()
        index, seed = self.ties["index"][here].long(), self.ties["code"][here].float()
        flat = q.flatten().clone()  # logical NCHW order, as the seed's flatten
        self.flips += int((flat[index] != seed).sum())
        if self.force:
            flat[index] = seed
        return flat.reshape(q.shape)


def _compare(net, fixture, monkeypatch, force: bool, float_stem: bool = True) -> list[dict]:
    net.float_stem = float_stem
    x = fixture["input"].float()
    out = []
    for name, gene, ref, ties in zip(
        fixture["names"], fixture["genes"], fixture["logits"], fixture["ties"], strict=True
    ):
        codes = _Codes(monkeypatch, ties, force, stem_quantized=not float_stem)
        net.set_active(gene_to_arch(gene))
        net.eval()
        with torch.no_grad():
            y = net(x)
        # the same quantizer calls as the seed's forward, in the same order
        assert (codes.call, codes.codes) == (ties["calls"], ties["codes"]), name
        out.append({
            "name": name,
            "max_dlogit": float((y - ref).abs().max()),
            "top1_agree": int((y.argmax(1) == ref.argmax(1)).sum()),
            "flips": codes.flips,
            "near_ties": len(ties["code"]),
            "codes": codes.codes,
        })
        monkeypatch.undo()
    return out


def test_subnets_compute_the_seeds_forward(converted, fixture, monkeypatch):
    """Mapping check: every subnet equals the seed's logits once the seed's near-tie codes are used.
    ``flips`` counts the near-ties the deployed arithmetic rounds the other way (given the seed's
    codes upstream): a handful in millions of codes."""
    net = load_supernet(converted)
    results = _compare(net, fixture, monkeypatch, force=True)
    print("forced near-ties:", results)
    for r in results:
        assert r["max_dlogit"] <= TOLERANCE, r
        assert r["top1_agree"] == fixture["input"].shape[0], r
        assert r["flips"] <= r["codes"] * 1e-5, r


def test_unforced_differs_only_where_a_code_flips(converted, fixture, monkeypatch):
    """The deployed arithmetic alone: a subnet where no near-tie rounds the other way equals the seed
    to the tolerance; where some do, the cascade they cause is reported (at 2-4 bits one flipped code
    moves every later layer)."""
    net = load_supernet(converted)
    forced = _compare(net, fixture, monkeypatch, force=True)
    results = _compare(net, fixture, monkeypatch, force=False)
    print("as deployed (float stem):", results)
    assert any(f["flips"] == 0 for f in forced)
    for r, f in zip(results, forced, strict=True):
        if f["flips"] == 0:
            assert r["max_dlogit"] <= TOLERANCE, r


def test_8bit_stem_is_measured(converted, fixture, monkeypatch):
    """The deployable network (8-bit stem, the seed's is float): the gap is reported, and bounded by
    the logits' own scale (a sanity bound, not an agreement claim)."""
    net = load_supernet(converted)
    results = _compare(net, fixture, monkeypatch, force=False, float_stem=False)
    print("8-bit stem:", results)
    for r, ref in zip(results, fixture["logits"], strict=True):
        assert r["max_dlogit"] < float(ref.abs().max()), r


def test_a_wrong_mapping_fails(converted, fixture, monkeypatch):
    """Swapping the depthwise quantizers of kernel 3 and 7 (what the seed keeps apart) breaks equality."""
    net = load_supernet(converted)
    with torch.no_grad():
        for block in net.blocks:
            pk = block.depthwise.per_kernel
            for name, p in pk["3"].named_parameters():
                other = dict(pk["7"].named_parameters())[name]
                tmp = p.clone()
                p.copy_(other)
                other.copy_(tmp)
    results = _compare(net, fixture, monkeypatch, force=True)
    random_subnet = next(r for r in results if r["name"] == "random")
    gene = fixture["genes"][fixture["names"].index("random")]
    assert {3, 7} <= set(gene_to_arch(gene).kernel)
    assert random_subnet["max_dlogit"] > 1e-3, random_subnet


def test_converted_file_is_a_checkpoint(converted):
    payload = torch.load(converted, weights_only=True)
    assert payload["space"] == "qfa-mbv3-w1.2" and payload["format"] == "qfa-supernet"
    model = payload["model"]
    # the seed's per-bit observers became per-bit ranges; its 7to5 matrix is stored transposed
    assert model["blocks.3.depthwise.per_kernel.5.act_quant.running_max"].shape == (3,)
    assert model["classifier.weight"].shape == (1000, 1536, 1, 1)


# ---- hostile inputs: one line, exit 2, no output file (nor staging litter) --------------------------


def _refused(tmp_path, source, *needles):
    out = tmp_path / "out.pt"
    code, _, err = run_cli("convert", "qfa-checkpoint", source, "-o", out)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.pt")] == []
    return err


def test_foreign_pth(tmp_path):
    torch.save({"state_dict": {"features.0.weight": torch.zeros(3)}}, tmp_path / "foreign.pth")
    _refused(tmp_path, tmp_path / "foreign.pth", "not a seed QFAMobileNetV3 state dict")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    _refused(tmp_path, tmp_path / "list.pth", "no state_dict")


def test_missing_key(seed_state, tmp_path):
    state = dict(seed_state)
    del state["blocks.7.mobile_inverted_conv.depth_conv.conv.a_quantizers.5.quantizers.3.observer.running_max"]
    torch.save({"state_dict": state}, tmp_path / "missing.pth")
    _refused(tmp_path, tmp_path / "missing.pth", "missing key", "a_quantizers.5.quantizers.3.observer.running_max")


def test_wrong_shape(seed_state, tmp_path):
    state = dict(seed_state)
    state["blocks.2.mobile_inverted_conv.point_linear.conv.conv.weight"] = torch.zeros(8, 8, 1, 1)
    torch.save({"state_dict": state}, tmp_path / "shape.pth")
    _refused(tmp_path, tmp_path / "shape.pth", "blocks.2.mobile_inverted_conv.point_linear.conv.conv.weight", "shape")


def test_unknown_key(seed_state, tmp_path):
    state = dict(seed_state)
    state["blocks.3.mobile_inverted_conv.extra.weight"] = torch.zeros(2)
    torch.save({"state_dict": state}, tmp_path / "extra.pth")
    _refused(tmp_path, tmp_path / "extra.pth", "unknown key blocks.3.mobile_inverted_conv.extra.weight")


def test_truncated_and_code_pickles(seed_state, tmp_path, converted):
    good = tmp_path / "good.pth"
    torch.save({"state_dict": {k: v for k, v in list(seed_state.items())[:50]}}, good)
    (tmp_path / "cut.pth").write_bytes(good.read_bytes()[:5000])
    _refused(tmp_path, tmp_path / "cut.pth", "not a readable checkpoint")
    (tmp_path / "code.pth").write_bytes(pickle.dumps({"state_dict": _Evil()}))
    _refused(tmp_path, tmp_path / "code.pth", "not a readable checkpoint")
    _refused(tmp_path, converted, "already a qfa-deploy checkpoint")


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


# ---- per-bit BatchQuant ranges (the seed's observers, one per bit) ---------------------------------


def test_per_bit_ranges_track_only_the_active_bit():
    q = BatchQuant((2, 3, 4), per_bit_ranges=True).train()
    x = torch.randn(4, 8, 5, 5, generator=torch.Generator().manual_seed(0))
    q.bits = 3
    q(x)
    q(2 * x)
    assert q.num_batches_tracked.tolist() == [0, 2, 0]
    assert q.running_min[0] == 0 and q.running_min[2] == 0 and q.running_min[1] < 0
    q.bits = 2
    q(x)  # the first batch of bit 2 sets its range, as for a fresh quantizer
    shared = BatchQuant((2,)).train()
    shared(x)
    assert torch.equal(q.running_range(2)[0], shared.running_min)
    assert torch.equal(q.single(3).running_max, q.running_max[1]) and q.single(3).running_max.ndim == 0


def test_the_float_phase_tracks_every_bit():
    """Unquantized (bits None, as in training's float epochs), the one range is every bit's range."""
    q = BatchQuant((2, 3, 4), per_bit_ranges=True).train()
    q.bits = None
    x = torch.randn(4, 8, 5, 5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(q(x), x)
    shared = BatchQuant((2,)).train()
    shared(x)
    assert q.num_batches_tracked.tolist() == [1, 1, 1]
    for bits in (2, 3, 4):
        assert torch.equal(q.running_range(bits)[1], shared.running_max)


def test_a_shared_range_loads_into_every_bit():
    """A supernet state written with one range per quantizer loads as that range for every bit."""
    shared = BatchQuant((2, 3, 4)).train()
    shared(torch.rand(4, 8, 5, 5) - 0.3)
    per_bit = BatchQuant((2, 3, 4), per_bit_ranges=True)
    per_bit.load_state_dict(shared.state_dict())
    shared.eval()
    per_bit.eval()
    for bits in (2, 3, 4):
        shared.bits = per_bit.bits = bits
        assert per_bit.fixed() == shared.fixed()


# ---- the deployment path: export --calib-batches 0 -> QDQ ONNX -> onnxruntime / TVM x86 -----------
#
# ``export --calib-batches 0`` keeps the converted checkpoint's stored statistics (the seed's), folds
# the subnet and writes the QDQ ONNX graph the runtimes run. The deployed stem is 8-bit (the seed's is
# float), so the seed's forward is compared with the exported graph from the stem's output on: the
# graph cut at ``stem/hswish`` is fed the float stem's output (qfa-deploy's ``float_stem`` forward,
# shown equal to the seed's above) and every later quantizer, conv, BN, SE and the head run in the
# runtime. The whole graph (8-bit stem) is compared with qfa-deploy's own integer forward.

STEM_OUTPUT = "stem/hswish"  # the float stem activation the first block reads


def _fixture_arch(gene, resolution: int):
    """The gene's subnet at the fixture's input resolution (the seed ran it on 128 px images)."""
    from qfa_deploy.arch import ArchConfig

    spec = gene_to_arch(gene).to_dict()
    spec["resolution"] = resolution
    return ArchConfig.from_dict(spec)


@pytest.fixture(scope="module")
def exported(converted, fixture, tmp_path_factory):
    """``export --calib-batches 0`` of every fixture subnet: name -> artifact folder. The space has
    no shipped calibration images and no --data is given: any read of data would fail."""
    folder = tmp_path_factory.mktemp("exported")
    out = {}
    for name, gene in zip(fixture["names"], fixture["genes"], strict=True):
        cfg = _fixture_arch(gene, fixture["input"].shape[-1])
        (folder / f"{name}.json").write_text(cfg.to_json())
        code, _, err = run_cli(
            "export", "--checkpoint", converted, "--arch", folder / f"{name}.json",
            "--calib-batches", "0", "--target", "onnx", "--out", folder / name,
        )
        assert code == 0, err
        out[name] = folder / name
    return out


class _Recorder(_Codes):
    """``_Codes`` that also keeps every code tensor it returns (the seed's codes once forced)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.recorded: list[torch.Tensor] = []

    def __call__(self, x, conv):
        q = super().__call__(x, conv)
        self.recorded.append(q.clone())
        return q


def _seed_run(net, fixture, index: int, monkeypatch):
    """The seed-equivalent forward (float stem, the seed's codes at its near-ties): the float stem's
    output and the codes of every later quantizer, in call order."""
    net.float_stem = True
    net.set_active(gene_to_arch(fixture["genes"][index]))
    net.eval()
    recorder = _Recorder(monkeypatch, fixture["ties"][index], force=True, stem_quantized=False)
    stem = {}
    hook = net.stem.register_forward_hook(lambda module, args, y: stem.setdefault("y", y))
    try:
        with torch.no_grad():
            logits = net(fixture["input"].float())
    finally:
        hook.remove()
        monkeypatch.undo()
    assert float((logits - fixture["logits"][index]).abs().max()) <= TOLERANCE
    return stem["y"], recorder.recorded


def _stem_cut(artifact: Path):
    """The exported graph from the stem's float output to the logits."""
    import onnx

    model = onnx.load(str(artifact / "model.onnx"))
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    return onnx.utils.Extractor(inferred).extract_model([STEM_OUTPUT], ["logits"])


def _against_seed(logits, ref) -> dict:
    import numpy as np

    ref = ref.numpy()
    return {
        "max_dlogit": float(np.abs(logits - ref).max()),
        "top1_agree": int((logits.argmax(1) == ref.argmax(1)).sum()),
    }


def _ort_codes_against_seed(ort_codes, seed_codes, ties) -> dict:
    """Codes of the runtime against the seed's (recorded with its near-ties forced): how many differ,
    the first quantizer where any does, whether all of those lie on the seed's near-ties, and how
    many of the seed's near-ties the runtime rounded the other way (cascade included)."""
    import numpy as np

    assert len(ort_codes) == len(seed_codes) == ties["calls"]
    differing, first, first_at_ties, near_tie_flips = 0, None, None, 0
    for call, (theirs, seed) in enumerate(zip(ort_codes, seed_codes, strict=True)):
        theirs = theirs.astype(np.int64).reshape(-1)
        seed = seed.numpy().astype(np.int64).reshape(-1)
        assert theirs.shape == seed.shape, call
        here = (ties["call"] == call).numpy()
        tie_index = ties["index"][here].long().numpy()
        near_tie_flips += int((theirs[tie_index] != ties["code"][here].numpy()).sum())
        where = np.flatnonzero(theirs != seed)
        differing += where.size
        if where.size and first is None:
            first, first_at_ties = call, bool(np.isin(where, tie_index).all())
    return {"codes": sum(c.size for c in ort_codes), "differing_codes": differing, "first_differing_quantizer": first,
            "first_differences_all_near_ties": first_at_ties, "near_tie_flips": near_tie_flips}


def test_exported_onnx_computes_the_seeds_forward(converted, exported, fixture, monkeypatch):
    """onnxruntime (graph optimisations off, and on) runs the exported graph of every fixture subnet
    on the float stem's output: top-1 equals the seed's on every image; a subnet whose codes all equal
    the seed's equals its logits to the tolerance; where codes differ, the first differences lie on
    the seed's own near-ties (float re-association rounding a boundary value the other way)."""
    from qfa_deploy.export.onnx_export import with_code_outputs
    from qfa_deploy.export.verify import ort_runner

    net = load_supernet(converted)
    n = fixture["input"].shape[0]
    results = []
    for i, name in enumerate(fixture["names"]):
        stem_y, seed_codes = _seed_run(net, fixture, i, monkeypatch)
        cut = _stem_cut(exported[name])
        outs = ort_runner(with_code_outputs(cut), optimize=False)(stem_y.numpy())
        r = {"name": name, **_against_seed(outs[0], fixture["logits"][i]),
             **_ort_codes_against_seed(outs[1:], seed_codes, fixture["ties"][i])}
        optimized = ort_runner(cut, optimize=True)(stem_y.numpy())[0]
        r["ort_default"] = _against_seed(optimized, fixture["logits"][i])
        results.append(r)
    print("ORT, exported graph from the float stem's output, against the seed:", results)
    assert any(r["differing_codes"] == 0 for r in results)
    for r in results:
        assert r["top1_agree"] == n and r["ort_default"]["top1_agree"] == n, r
        if r["differing_codes"] == 0:
            assert r["max_dlogit"] <= TOLERANCE and r["ort_default"]["max_dlogit"] <= TOLERANCE, r
        else:
            assert r["first_differences_all_near_ties"], r


def test_exported_onnx_is_the_integer_forward(converted, exported, fixture):
    """The whole exported graph (8-bit stem) against qfa-deploy's PyTorch eval subnet, quantizer by
    quantizer with teacher forcing (``verify``'s check); its gap to the seed's float stem is reported."""
    import onnx

    from qfa_deploy.export.verify import ort_runner, quantizer_parity
    from qfa_deploy.extract import extract

    net = load_supernet(converted)
    x = fixture["input"].float()
    results = []
    for i, (name, gene) in enumerate(zip(fixture["names"], fixture["genes"], strict=True)):
        cfg = _fixture_arch(gene, x.shape[-1])
        net.set_active(cfg)
        subnet = extract(net, cfg).eval()
        model = onnx.load(str(exported[name] / "model.onnx"))
        parity = quantizer_parity(subnet, model, x)
        logits = ort_runner(model, optimize=False)(x.numpy())[0]
        results.append({"name": name, **parity, "vs_seed_float_stem": _against_seed(logits, fixture["logits"][i])})
    print("ORT, whole graph (8-bit stem):", results)
    for r in results:
        assert r["max_code_diff"] <= 1 and r["differing_codes"] <= r["codes"] * 1e-5, r
        assert r["max_abs_logit_diff"] <= TOLERANCE, r


def _tvm_against_seed(converted, exported, fixture, monkeypatch, names, tmp_path) -> list[dict]:
    """``compile_artifact`` (x86) of the stem cut, run by ``tvm_library_runner``, against the seed."""
    import onnx

    from qfa_deploy.deploy.compile import compile_artifact
    from qfa_deploy.export.verify import ort_runner, tvm_library_runner

    net = load_supernet(converted)
    n = fixture["input"].shape[0]
    out = []
    for name in names:
        i = fixture["names"].index(name)
        stem_y, _ = _seed_run(net, fixture, i, monkeypatch)
        cut = _stem_cut(exported[name])
        onnx.save(cut, str(tmp_path / f"{name}.onnx"))
        meta = compile_artifact(tmp_path / f"{name}.onnx", "x86", tmp_path / name, batch_size=n)
        logits = tvm_library_runner(tmp_path / name / meta["library"], n)(stem_y.numpy())[0]
        ort = ort_runner(cut, optimize=False)(stem_y.numpy())[0]
        out.append({"name": name, **_against_seed(logits, fixture["logits"][i]),
                    "max_dlogit_vs_ort": float(abs(logits - ort).max()),
                    "compile_seconds": meta["compile_seconds"], "schedule": meta["schedule"]})
    return out


def test_tvm_x86_computes_the_seeds_forward(converted, exported, fixture, monkeypatch, tmp_path):
    """TVM x86 (the deploy compiler, ~30 s here) on the random subnet's graph from the stem output."""
    results = _tvm_against_seed(converted, exported, fixture, monkeypatch, ["random"], tmp_path)
    print("TVM x86 against the seed:", results)
    for r in results:
        assert r["top1_agree"] == fixture["input"].shape[0], r
        assert r["max_dlogit"] <= TOLERANCE and r["max_dlogit_vs_ort"] <= TOLERANCE, r


@pytest.mark.slow
def test_tvm_x86_other_subnets(converted, exported, fixture, monkeypatch, tmp_path):
    """The largest and smallest subnets through TVM x86 (a minute or more of compiling here)."""
    results = _tvm_against_seed(converted, exported, fixture, monkeypatch, ["largest", "smallest"], tmp_path)
    print("TVM x86 against the seed:", results)
    for r in results:
        assert r["top1_agree"] == fixture["input"].shape[0], r
        assert r["max_dlogit_vs_ort"] <= TOLERANCE, r  # the largest inherits ORT's near-tie cascade
    assert next(r for r in results if r["name"] == "smallest")["max_dlogit"] <= TOLERANCE
