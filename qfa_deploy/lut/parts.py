"""Representative models of a table's parts and of whole subnets, for measurement.

Latency does not depend on weight values, so parts come from a randomly initialised supernet whose
statistics are set on random data and whose BatchQuant offsets and scale multipliers are random too,
as a trained supernet's are (``_learned_like_trained``: their initial values fold to no op at all).
They are folded and exported exactly like a deployed subnet (the same QDQ graph), so a part measures
what the deployment runs. All elastic blocks at a (kernel, expand) pair come from one full-depth
config, so the 9 configs of a 3x3 space give every block part.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from functools import lru_cache

import onnx
import torch

from qfa_deploy.arch import CONVS_PER_BLOCK, FIRST_BLOCK_CONVS, ArchConfig
from qfa_deploy.calibrate import calibrate
from qfa_deploy.export.onnx_export import export_onnx
from qfa_deploy.export.parts_onnx import export_part_onnx
from qfa_deploy.extract import extract
from qfa_deploy.fold import FoldedSubnet, fold
from qfa_deploy.lut.keys import LatencyKey, bits_length, block_key, head_key, spatial_sizes, stem_key
from qfa_deploy.nn.supernet import QFASupernet
from qfa_deploy.quant.batchquant import BatchQuant
from qfa_deploy.space import create_space

__all__ = ["PartModels"]


class PartModels:
    """ONNX models of the parts of ``space`` at ``resolution`` (and of whole subnets)."""

    def __init__(self, space: str, resolution: int, seed: int = 0) -> None:
        self.space = create_space(space)
        self.resolution = resolution
        torch.manual_seed(seed)
        self.supernet = QFASupernet(self.space).eval()
        self._generator = torch.Generator().manual_seed(seed)
        _learned_like_trained(self.supernet, self._generator)
        # extract() switches the shared supernet to a config: builds measuring several boards ask from
        # several threads, and interleaved switches would extract one config's weights into another's shapes
        self._lock = threading.Lock()
        _, self.sizes, self.head_size = spatial_sizes(self.space, resolution)
        self._where: dict[str, tuple[int, int, int]] = {}
        for b in range(self.space.num_blocks):
            for k in self.space.kernel_choices:
                for e in self.space.expand_choices:
                    self._where.setdefault(str(block_key(self.space, b, self.sizes[b], k, e)), (b, k, e))

    def folded(self, cfg: ArchConfig) -> FoldedSubnet:
        """``cfg`` extracted, calibrated on two random batches, folded (thread-safe)."""
        with self._lock:
            return _fold_cached(self, cfg)

    def _fold(self, cfg: ArchConfig) -> FoldedSubnet:
        subnet = extract(self.supernet, cfg)
        r = cfg.resolution
        batches = [torch.randn(8, 3, r, r, generator=self._generator) for _ in range(2)]
        calibrate(subnet, batches, r, len(batches))
        return fold(subnet)

    def _uniform(self, kernel: int, expand: int) -> ArchConfig:
        base = ArchConfig.largest(self.space.name)
        n = self.space.num_blocks
        return replace(base, resolution=self.resolution, kernel=(kernel,) * n, expand=(expand,) * n)

    def part(self, key: LatencyKey) -> onnx.ModelProto:
        """The QDQ ONNX of one part (batch 1) at its key's bits, or at the highest bitwidth for a key
        without bits."""
        if key.bits:
            return self.part_with_bits(replace(key, bits=()), key.bits)
        return self.part_at_bits(key, max(self.space.bit_choices))

    def part_at_bits(self, key: LatencyKey, bits: int) -> onnx.ModelProto:
        """The QDQ ONNX of one part with every conv at ``bits`` (batch 1)."""
        return self.part_with_bits(key, (bits,) * bits_length(key, self.space))

    def part_with_bits(self, key: LatencyKey, bits: tuple[int, ...]) -> onnx.ModelProto:
        """The QDQ ONNX of one bit-agnostic part with its convs at ``bits`` (``arch_keys``' order), batch 1."""
        top = max(self.space.bit_choices)
        if key.kind == "block":
            b, k, e = self._where[str(key)]
            cfg = self._uniform(k, e).with_uniform_bits(top, top)
            cfg = replace(cfg, w_bits=_put(cfg.w_bits, b, bits[:CONVS_PER_BLOCK]),
                          a_bits=_put(cfg.a_bits, b, bits[CONVS_PER_BLOCK:]))
            return export_part_onnx(self.folded(cfg), "block", index=1 + b, batch=1)
        cfg = self._uniform(max(self.space.kernel_choices), max(self.space.expand_choices)).with_uniform_bits(top, top)
        if key.kind == "stem" and key == stem_key(self.space, self.resolution):
            cfg = replace(cfg, first_w_bits=bits[:FIRST_BLOCK_CONVS], first_a_bits=bits[FIRST_BLOCK_CONVS:])
            return export_part_onnx(self.folded(cfg), "stem", batch=1)
        if key.kind == "head" and key == head_key(self.space, self.head_size):
            cfg = replace(cfg, final_w_bits=bits[0], final_a_bits=bits[1])
            if self.space.elastic_mix:
                cfg = replace(cfg, mix_w_bits=bits[2], mix_a_bits=bits[3])
            return export_part_onnx(self.folded(cfg), "head", batch=1)
        raise KeyError(f"no part {key} in space {self.space.name} at resolution {self.resolution}")

    def subnet(self, cfg: ArchConfig) -> onnx.ModelProto:
        """The QDQ ONNX of a whole subnet (batch 1)."""
        return export_onnx(self.folded(cfg), batch=1)


@lru_cache(maxsize=12)
def _fold_cached(models: PartModels, cfg: ArchConfig) -> FoldedSubnet:
    return models._fold(cfg)


def _put(per_block: tuple, index: int, value: tuple) -> tuple:
    """``per_block`` with entry ``index`` replaced by ``value``."""
    return (*per_block[:index], tuple(value), *per_block[index + 1 :])


def _learned_like_trained(supernet: QFASupernet, generator: torch.Generator) -> None:
    """Give every BatchQuant's learned offset and scale multiplier random non-zero values, as training
    leaves them. At their initial values (offset 0, multiplier 1) the fold has no offset to carry, so
    the exported graph lacks the adds (and the depthwise convs' per-position bias maps) that every
    trained subnet has: such parts measured ~10% faster on the Pi 4 than the trained subnets they stand
    for (2.527 against 2.784 ms, and 2.774 ms with random offsets; bench/mixed_bits.py's
    ``table_models_ms``)."""
    with torch.no_grad():
        for quantizer in supernet.modules():
            if isinstance(quantizer, BatchQuant):
                quantizer.offset.copy_(torch.rand(quantizer.offset.shape, generator=generator) - 0.5)
                quantizer.scale_param.copy_(0.2 * torch.randn(quantizer.scale_param.shape, generator=generator))
