"""The seed's measured subnets (apple/ml-batchquant: the accuracy predictor's training data) -> the
records ``qfa-deploy collect`` writes and ``qfa-deploy predictor fit`` reads (one JSON line each).

The seed keeps them in two forms, both read here:

- a folder of ``collect_network_info.py`` outputs, one JSON object per measured subnet
  (``samples/<uuid>.json``): ``get_net_info``'s ``params`` and ``flops``, the validation ``loss``,
  ``acc1`` / ``acc5`` / ``target_metric`` (percent, from ``RunManager.validate``), the resolution ``r``,
  ``ks`` and ``e`` (20 each), ``d`` (5) and ``b``: every quantizer of its ``QFAMobileNetV3`` by module
  name (``quantizer_dict``) -> its active bits;
- one JSON list of such records, ``qsamples_8k.json``, which ``nsgaii_search.py`` reads: ``acc1``
  (percent), ``lut_flops``, ``ks``, ``e``, ``d``, ``r`` and ``bs``, the (w, a) bits per layer as
  ``QFAMobileNetV3.get_pareto_config`` lists them (first conv, 21 blocks of 6, final expand, feature
  mix, classifier); ``get_gene`` there makes the 176-integer gene of ``ks + e + d + [r] + bs[1:-1]``.
  The file itself is not in the seed's repository (a large-file pointer), so its fields are those its
  reader uses.

A record with ``bs`` is read through it, one with only ``b`` through the quantizer names (the
depthwise bits are those of the active kernel size's quantizers, ``w_quantizers.<k>``), each into
the seed's gene and then ``convert qfa-gene``'s ``gene_to_arch``. The first conv (float in the seed) and
the classifier (8-bit) are not gene choices and are not read. ``top1`` is ``acc1 / 100``; MACs and
BitOPs are qfa-deploy's cost model's, as ``collect`` computes them. The measurement settings
``collect`` records (``seed``, ``calib_batches``, ``val_images``, ``checkpoint``) are not the seed's
notions and are null; ``source`` names the file and record, and keeps the seed's own numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qfa_deploy.arch import ArchConfig
from qfa_deploy.convert.qfa_gene import BLOCKS, GENE_LENGTH, PLACEHOLDER, SEED_SPACE, STAGES, gene_to_arch
from qfa_deploy.errors import QfaError
from qfa_deploy.strict_json import check_number, check_type, parse_json

__all__ = ["convert_samples", "read_samples", "record_to_arch", "records_jsonl"]

_MAX_BYTES = 1 << 30  # a sample file larger than this is not the seed's


def read_samples(source: str | Path) -> list[tuple[str, dict]]:
    """``(where, record)`` of every sample in ``source``: a folder of the seed's per-sample JSON files
    (read in name order) or one JSON file (a list of records, or one record)."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".json" and not p.name.startswith("."))
        if not files:
            raise QfaError(f"{path}: no .json sample files in this folder")
    elif path.is_file():
        files = [path]
    else:
        raise QfaError(f"{path}: no such sample file or folder")
    out = []
    for f in files:
        try:
            if f.stat().st_size > _MAX_BYTES:
                raise QfaError(f"{f}: {f.stat().st_size} bytes, too large for a sample file")
            data = parse_json(f.read_bytes(), str(f))
        except OSError as exc:
            raise QfaError(f"{f}: cannot read ({exc.strerror or exc.__class__.__name__})") from None
        if isinstance(data, dict):
            out.append((str(f), data))
        elif isinstance(data, list):
            for i, rec in enumerate(data):
                if not isinstance(rec, dict):
                    raise QfaError(f"{f}[{i}]: a sample is a JSON object, not {type(rec).__name__}")
                out.append((f"{f}[{i}]", rec))
        else:
            raise QfaError(f"{f}: a sample file holds a JSON object or a list of them, not {type(data).__name__}")
    if not out:
        raise QfaError(f"{path}: holds no samples")
    return out


def _ints(rec: dict, name: str, length: int | None, where: str) -> list[int]:
    if name not in rec:
        raise QfaError(f"{where}: no '{name}' (not a sample of the seed's collect_network_info / qsamples format)")
    value = rec[name]
    if name == "r" and isinstance(value, list) and len(value) == 1:  # get_pareto_config writes [r]
        value = value[0]
    values = [value] if length is None else check_type(value, list, f"{where}: '{name}'")
    if length is not None and len(values) != length:
        raise QfaError(f"{where}: '{name}' has {len(values)} values, the seed's W1.2 supernet {length}")
    return [int(check_number(v, f"{where}: '{name}'", integer=True)) for v in values]


def _bits_from_bs(bs: Any, where: str) -> list[int]:
    """The gene's 130 bits from ``get_pareto_config``'s ``bs`` (``get_gene``: ``concatenate(bs[1:-1])``)."""
    check_type(bs, list, f"{where}: 'bs'")
    sizes = [2] + [6] * (BLOCKS + 1) + [2, 2, 2]
    if len(bs) != len(sizes):
        raise QfaError(f"{where}: 'bs' lists {len(bs)} layers, the seed's W1.2 supernet {len(sizes)} "
                       "(first conv, 21 blocks, final expand, feature mix, classifier)")
    bits = []
    for i, (layer, size) in enumerate(zip(bs, sizes, strict=True)):
        check_type(layer, list, f"{where}: 'bs'[{i}]")
        if len(layer) != size:
            raise QfaError(f"{where}: 'bs'[{i}] has {len(layer)} bits, expected {size}")
        if 0 < i < len(bs) - 1:
            bits += [int(check_number(b, f"{where}: 'bs'[{i}]", integer=True)) for b in layer]
    return bits


def _bits_from_b(b: Any, kernels: list[int], where: str) -> list[int]:
    """The gene's 130 bits from ``collect_network_info``'s ``b`` (quantizer module name -> active bits)."""
    check_type(b, dict, f"{where}: 'b'")

    def bit(name: str) -> int:
        if name not in b:
            raise QfaError(f"{where}: 'b' has no quantizer {name}")
        return int(check_number(b[name], f"{where}: 'b'[{name}]", integer=True))

    def pair(conv: str, suffix: str = "") -> list[int]:
        plural = "s" if suffix else ""
        return [bit(f"{conv}.w_quantizer{plural}{suffix}"), bit(f"{conv}.a_quantizer{plural}{suffix}")]

    first = "blocks.0.mobile_inverted_conv"
    bits = [PLACEHOLDER, PLACEHOLDER, *pair(f"{first}.depth_conv.conv", ".3"), *pair(f"{first}.point_linear.conv")]
    for n in range(1, BLOCKS + 1):
        block = f"blocks.{n}.mobile_inverted_conv"
        bits += pair(f"{block}.inverted_bottleneck.conv")
        bits += pair(f"{block}.depth_conv.conv", f".{kernels[n - 1]}")
        bits += pair(f"{block}.point_linear.conv")
    return bits + pair("final_expand_layer.conv") + pair("feature_mix_layer.conv")


def record_to_arch(rec: dict, where: str) -> ArchConfig:
    """The canonical ``ArchConfig`` of one seed sample (through its 176-integer gene)."""
    ks = _ints(rec, "ks", BLOCKS, where)
    head = ks + _ints(rec, "e", BLOCKS, where) + _ints(rec, "d", STAGES, where) + _ints(rec, "r", None, where)
    if "bs" in rec:
        bits = _bits_from_bs(rec["bs"], where)
    elif "b" in rec:
        if any(k not in (3, 5, 7) for k in ks):
            raise QfaError(f"{where}: 'ks' holds {sorted(set(ks) - {3, 5, 7})}, not kernel sizes of 3, 5 or 7")
        bits = _bits_from_b(rec["b"], ks, where)
    else:
        raise QfaError(f"{where}: no bits ('bs' as in qsamples_8k.json, or 'b' as collect_network_info.py writes)")
    gene = head + bits
    if len(gene) != GENE_LENGTH:  # the counts above make 176: a gap is a bug here
        raise AssertionError(len(gene))
    return gene_to_arch(gene, where)


def _top1(rec: dict, where: str) -> float:
    if "acc1" not in rec:
        raise QfaError(f"{where}: no 'acc1' (the seed's top-1 accuracy, percent)")
    return float(check_number(rec["acc1"], f"{where}: 'acc1'", low=0, high=100)) / 100.0


def convert_samples(source: str | Path) -> list[dict]:
    """``collect`` records (in the source's order, ``index`` 0..n-1) of the seed's samples in ``source``."""
    from qfa_deploy.search.cost import CostModel
    from qfa_deploy.search.genome import GenomeSpace

    samples = read_samples(source)
    cfgs = [record_to_arch(rec, where) for where, rec in samples]
    top1 = [_top1(rec, where) for where, rec in samples]
    genome = GenomeSpace(SEED_SPACE)
    cost = CostModel(genome)
    g = genome.encode(cfgs)
    macs, bitops = cost.macs(g), cost.bitops(g)
    records = []
    for i, ((where, rec), cfg) in enumerate(zip(samples, cfgs, strict=True)):
        kept = {k: rec[k] for k in ("acc1", "acc5", "loss", "flops", "lut_flops", "params")
                if isinstance(rec.get(k), (int, float)) and not isinstance(rec.get(k), bool)}
        records.append({
            "index": i,
            "space": SEED_SPACE,
            "seed": None,
            "calib_batches": None,
            "val_images": None,
            "checkpoint": None,
            "top1": top1[i],
            "macs": int(macs[i]),
            "bitops": float(bitops[i]),
            "mflops": int(macs[i]) / 1e6,
            "gbitops": float(bitops[i]) / 1e9,
            "seconds": None,
            "digest": cfg.digest(),
            "arch": cfg.to_dict(),
            "source": {"converted_from": "apple/ml-batchquant", "sample": where, **kept},
        })
    return records


def records_jsonl(records: list[dict]) -> str:
    """The records as ``collect`` writes them: compact JSON, one line each."""
    return "".join(json.dumps(rec, separators=(",", ":")) + "\n" for rec in records)
