"""What determines a part's latency on a target: the keys of a latency table.

A subnet is cut into parts that are measured on their own: the *stem* (stem conv + fixed first
block), every active MBConv *block*, and the *head* (final expand, pool, feature mix, classifier).
A part's key holds its input shape and everything that changes the kernels that run: channels,
kernel, stride, squeeze-excite, activation, and the bits when the table says they matter on its
target: on most targets the bits only change clamp bounds; where a schedule runs some 1x1 convs on
kernels of their own at few bits, the parts holding them carry their bits (``lut.bit_kernels``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from qfa_deploy.arch import CONVS_PER_BLOCK, FIRST_BLOCK_CONVS, ArchConfig
from qfa_deploy.nn.supernet import block_channels
from qfa_deploy.space import SearchSpace, create_space, spatial_sizes  # spatial_sizes: re-exported

__all__ = ["LatencyKey", "arch_keys", "bits_length", "block_key", "space_keys", "spatial_sizes"]


@dataclass(frozen=True, order=True)
class LatencyKey:
    """One measurable part. ``bits`` is empty unless the table keys on bits."""

    kind: str  # "stem" | "block" | "head"
    size: int  # input height = width
    in_ch: int
    mid_ch: int
    out_ch: int
    kernel: int = 1
    stride: int = 1
    se: bool = False
    act: str = "none"
    bits: tuple[int, ...] = ()

    def __str__(self) -> str:
        bits = f"|b{''.join(map(str, self.bits))}" if self.bits else ""
        return (
            f"{self.kind}|{self.size}|{self.in_ch}-{self.mid_ch}-{self.out_ch}|k{self.kernel}|s{self.stride}"
            f"|se{int(self.se)}|{self.act}{bits}"
        )

    @classmethod
    def parse(cls, text: str) -> LatencyKey:
        parts = text.split("|")
        kind, size, chans, k, s, se, act = parts[:7]
        in_ch, mid_ch, out_ch = (int(c) for c in chans.split("-"))
        bits = tuple(int(c) for c in parts[7][1:]) if len(parts) > 7 else ()
        return cls(kind, int(size), in_ch, mid_ch, out_ch, int(k[1:]), int(s[1:]), se == "se1", act, bits)


# (bit-agnostic key, the part's bits in ``arch_keys``' order) -> the bits its key carries (``()``: none)
KeyedBits = Callable[[LatencyKey, tuple[int, ...]], tuple[int, ...]]


def block_key(space: SearchSpace, block: int, size: int, kernel: int, expand: int,
              bits: tuple[int, ...] = ()) -> LatencyKey:
    in_ch, mid, out_ch, stride = block_channels(space, block, expand)
    st = space.stages[space.block_stage(block)]
    return LatencyKey("block", size, in_ch, mid, out_ch, kernel, stride, st.use_se, st.act, bits)


def stem_key(space: SearchSpace, resolution: int, bits: tuple[int, ...] = ()) -> LatencyKey:
    c = space.stem_width
    return LatencyKey("stem", resolution, 3, c, c, 3, space.stem_stride, False, "hswish", bits)


def head_key(space: SearchSpace, size: int, bits: tuple[int, ...] = ()) -> LatencyKey:
    return LatencyKey(
        "head", size, space.stages[-1].width, space.final_expand_width, space.num_classes,
        1, 1, False, "hswish", bits,
    )


def arch_keys(cfg: ArchConfig, keyed_bits: KeyedBits | None = None) -> list[LatencyKey]:
    """The parts of ``cfg``, in execution order; with ``keyed_bits`` (a table's
    ``BitKernels.canonical``), each with the bits its key carries, else none."""
    sp = create_space(cfg.space)
    _, sizes, head_size = spatial_sizes(sp, cfg.resolution)

    def keyed(key: LatencyKey, bits: tuple[int, ...]) -> LatencyKey:
        return replace(key, bits=keyed_bits(key, bits)) if keyed_bits else key

    # A stage's first block may be skipped by no subnet (depth >= 2), so sizes at full depth hold
    # for every active block: the stride sits in the first block of each stage.
    keys = [keyed(stem_key(sp, cfg.resolution), (*cfg.first_w_bits, *cfg.first_a_bits))]
    for b in cfg.active_blocks():
        keys.append(keyed(block_key(sp, b, sizes[b], cfg.kernel[b], cfg.expand[b]), (*cfg.w_bits[b], *cfg.a_bits[b])))
    head_bits = (cfg.final_w_bits, cfg.final_a_bits) + ((cfg.mix_w_bits, cfg.mix_a_bits) if sp.elastic_mix else ())
    keys.append(keyed(head_key(sp, head_size), head_bits))
    return keys


def bits_length(key: LatencyKey, space: SearchSpace) -> int:
    """How many bits ``arch_keys`` gives a part of ``key``'s kind: 6 a block (its three convs' w, then
    a), 4 the stem (the first block's two convs), 2 the head (4 with the space's feature-mix bits)."""
    return {"block": 2 * CONVS_PER_BLOCK, "stem": 2 * FIRST_BLOCK_CONVS}.get(key.kind, 4 if space.elastic_mix else 2)


def space_keys(space: SearchSpace | str, resolution: int) -> list[LatencyKey]:
    """Every distinct bit-agnostic part of ``space`` at ``resolution`` (what a table measures)."""
    sp = create_space(space) if isinstance(space, str) else space
    _, sizes, head_size = spatial_sizes(sp, resolution)
    keys = {stem_key(sp, resolution), head_key(sp, head_size)}
    for b in range(sp.num_blocks):
        for k in sp.kernel_choices:
            for e in sp.expand_choices:
                keys.add(block_key(sp, b, sizes[b], k, e))
    return sorted(keys)
