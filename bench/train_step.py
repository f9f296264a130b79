"""One supernet training step (largest subnet, mixed bits) vs a plain PyTorch FP step of the same
static architecture, same batch, same run. Prints medians and the ratio (goal <= 1.3x).

Both wall time and this process's CPU time are reported: on a shared core the wall time also counts
the neighbours' time slices, the CPU time (one torch thread) counts only this step's work.

    python bench/train_step.py [--space qfa-mbv3-cifar10] [--batch 64] [--repeats 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from qfa_deploy.arch import ArchConfig, sample_arch
from qfa_deploy.extract import extract
from qfa_deploy.nn.layers import QuantConv, SqueezeExcite
from qfa_deploy.nn.mbconv import MBConv
from qfa_deploy.nn.supernet import QFASupernet


class PlainConv(nn.Sequential):
    def __init__(self, conv: QuantConv) -> None:
        layers = [
            nn.Conv2d(
                conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.kernel_size // 2,
                groups=conv.in_channels if conv.depthwise else 1, bias=conv.bias is not None,
            )
        ]
        if conv.bn is not None:
            layers.append(nn.BatchNorm2d(conv.out_channels))
        layers.append({"relu": nn.ReLU(), "hswish": nn.Hardswish()}.get(conv.act, nn.Identity()))
        super().__init__(*layers)


class PlainBlock(nn.Module):
    def __init__(self, block: MBConv) -> None:
        super().__init__()
        convs = [PlainConv(c) for c in block.convs()]
        if block.se is not None:
            se = block.se
            plain_se = SqueezeExcite(se.reduce.in_channels, se.reduce.out_channels)
            convs.insert(len(convs) - 1, plain_se)
        self.body = nn.Sequential(*convs)
        self.residual = block.residual

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class PlainNet(nn.Module):
    """The same static architecture as a plain float PyTorch network."""

    def __init__(self, subnet) -> None:
        super().__init__()
        self.stem = PlainConv(subnet.stem)
        self.blocks = nn.Sequential(PlainBlock(subnet.first_block), *[PlainBlock(b) for b in subnet.blocks])
        self.final_expand = PlainConv(subnet.final_expand)
        self.feature_mix = PlainConv(subnet.feature_mix)
        self.dropout = nn.Dropout(0.1)
        self.classifier = PlainConv(subnet.classifier)

    def forward(self, x):
        x = self.final_expand(self.blocks(self.stem(x)))
        x = self.feature_mix(x.mean((2, 3), keepdim=True))
        return self.classifier(self.dropout(x)).flatten(1)


def time_step(model: nn.Module, opt, x, y, repeats: int, before=None) -> tuple[float, float]:
    """Median (wall, CPU) seconds of one training step."""
    wall, cpu = [], []
    for i in range(repeats + 2):
        if before:
            before()
        t, c = time.perf_counter(), time.process_time()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if i >= 2:  # warm-up
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="qfa-mbv3-cifar10")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sup = QFASupernet(args.space).to(memory_format=torch.channels_last).train()
    rng = random.Random(0)
    largest = ArchConfig.largest(args.space)
    bits = sample_arch(args.space, rng)  # mixed bits on the largest architecture
    mixed = replace(
        largest, w_bits=bits.w_bits, a_bits=bits.a_bits, first_w_bits=bits.first_w_bits,
        first_a_bits=bits.first_a_bits, final_w_bits=bits.final_w_bits, final_a_bits=bits.final_a_bits,
    )
    sup.set_active(mixed)
    plain = PlainNet(extract(sup, mixed)).to(memory_format=torch.channels_last).train()
    r = mixed.resolution
    x = torch.randn(args.batch, 3, r, r).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, sup.space.num_classes, (args.batch,))
    opt_s = torch.optim.SGD(sup.parameters(), lr=1e-3, momentum=0.9)
    opt_p = torch.optim.SGD(plain.parameters(), lr=1e-3, momentum=0.9)
    results = {}
    for _ in range(2):  # interleave to share the machine's noise
        results.setdefault("supernet", []).append(
            time_step(sup, opt_s, x, y, args.repeats, before=lambda: sup.set_active(mixed)))
        results.setdefault("plain", []).append(time_step(plain, opt_p, x, y, args.repeats))
    (s, s_cpu), (p, p_cpu) = (
        [statistics.median(t) for t in zip(*results[k], strict=True)] for k in ("supernet", "plain")
    )
    print(f"space {args.space}, largest subnet, mixed bits, batch {args.batch}, {args.threads} threads")
    for name, wall, cpu in (("supernet step (quantized, elastic):", s, s_cpu), ("plain PyTorch FP step:", p, p_cpu)):
        print(f"  {name:36s} {1000 * wall:8.1f} ms  ({args.batch / wall:6.1f} img/s)  CPU {1000 * cpu:8.1f} ms")
    print(f"  ratio supernet / plain: {s / p:.2f}x wall, {s_cpu / p_cpu:.2f}x CPU (goal <= 1.3x)")


if __name__ == "__main__":
    main()
