"""The elastic, mixed-precision OFA MobileNetV3 supernet of a search space."""

from __future__ import annotations

import functools

import torch

from qfa_deploy.arch import ArchConfig
from qfa_deploy.nn.elastic import ElasticQuantConv, ElasticSqueezeExcite
from qfa_deploy.nn.layers import QuantConv
from qfa_deploy.nn.mbconv import MBConv
from qfa_deploy.nn.network import QuantMobileNet
from qfa_deploy.quant import BatchQuant, act_quantizer_class
from qfa_deploy.space import SearchSpace, create_space, make_divisible

__all__ = ["QFASupernet", "block_channels"]


def block_channels(space: SearchSpace, block: int, expand: int) -> tuple[int, int, int, int]:
    """(in, mid, out, stride) of elastic block ``block`` at expand ratio ``expand``."""
    stage, j = divmod(block, space.max_depth)
    in_ch = space.stem_width if stage == 0 else space.stages[stage - 1].width
    in_ch = in_ch if j == 0 else space.stages[stage].width
    mid = make_divisible(round(in_ch * expand))
    stride = space.stages[stage].stride if j == 0 else 1
    return in_ch, mid, space.stages[stage].width, stride


class QFASupernet(QuantMobileNet):
    """Every subnet of ``space`` at once; ``set_active(cfg)`` picks the one that runs."""

    def __init__(self, space: SearchSpace | str, act_quantizer: str = "batchquant") -> None:
        sp = create_space(space) if isinstance(space, str) else space
        bits, fixed = sp.bit_choices, (sp.fixed_bits,)
        aq = act_quantizer_class(act_quantizer)
        if aq is BatchQuant and sp.per_bit_act_ranges:
            aq = functools.partial(BatchQuant, per_bit_ranges=True)
        elastic = dict(w_bit_choices=bits, a_bit_choices=bits, act_quant_cls=aq)
        fixed_q = dict(w_bit_choices=fixed, a_bit_choices=fixed, act_quant_cls=aq)
        mix_q = dict(w_bit_choices=sp.mix_choices, a_bit_choices=sp.mix_choices, act_quant_cls=aq)
        stem = QuantConv(3, sp.stem_width, 3, sp.stem_stride, act="hswish", **fixed_q)
        c0 = sp.stem_width
        first = MBConv(
            expand=None,
            depthwise=ElasticQuantConv(c0, c0, 3, 1, depthwise=True, act="relu", **elastic),
            se=None,
            project=ElasticQuantConv(c0, c0, 1, **elastic),
            residual=True,
        )
        blocks = []
        k_max, e_max = max(sp.kernel_choices), max(sp.expand_choices)
        for b in range(sp.num_blocks):
            in_ch, mid, out_ch, stride = block_channels(sp, b, e_max)
            st = sp.stages[sp.block_stage(b)]
            blocks.append(
                MBConv(
                    expand=ElasticQuantConv(in_ch, mid, 1, act=st.act, **elastic),
                    depthwise=ElasticQuantConv(
                        mid, mid, k_max, stride, depthwise=True, act=st.act,
                        kernel_choices=sp.kernel_choices, **elastic,
                    ),
                    se=ElasticSqueezeExcite(mid, make_divisible(mid // 4)) if st.use_se else None,
                    project=ElasticQuantConv(mid, out_ch, 1, **elastic),
                    residual=stride == 1 and in_ch == out_ch,
                )
            )
        last = sp.stages[-1].width
        super().__init__(
            stem=stem,
            first_block=first,
            blocks=blocks,
            final_expand=ElasticQuantConv(last, sp.final_expand_width, 1, act="hswish", **elastic),
            feature_mix=QuantConv(
                sp.final_expand_width, sp.feature_mix_width, 1, act="hswish", use_bn=False, **mix_q,
            ),
            classifier=QuantConv(
                sp.feature_mix_width, sp.num_classes, 1, use_bn=False, use_bias=True, **fixed_q,
            ),
            dropout=sp.dropout,
        )
        self.space = sp
        self.act_quantizer = act_quantizer
        with torch.no_grad():  # small logits at init (a fan-out Kaiming classifier starts at loss ~4.6)
            self.classifier.weight.normal_(0.0, 0.01)
            self.classifier.weight_quant.init_steps(self.classifier.weight)
        self.active: ArchConfig = ArchConfig.largest(sp.name)
        self.quantized = True
        # The seed runs its stem conv in float: True does too (PyTorch only: the integer form, fold and
        # every export need the 8-bit stem). Takes effect at the next set_active.
        self.float_stem = False
        self.set_active(self.active)

    def set_active(self, cfg: ArchConfig, quantized: bool = True) -> None:
        """Make ``cfg`` the subnet that runs; ``quantized=False`` runs it in full precision."""
        if cfg.space != self.space.name:
            raise ValueError(f"arch of space {cfg.space!r} given to a {self.space.name!r} supernet")
        self.active, self.quantized = cfg, quantized
        q = (lambda b: b) if quantized else (lambda b: None)
        c0 = self.space.stem_width
        self.first_block.depthwise.set_active(c0, 3, q(cfg.first_w_bits[0]), q(cfg.first_a_bits[0]))
        self.first_block.project.set_active(c0, 1, q(cfg.first_w_bits[1]), q(cfg.first_a_bits[1]))
        for b, block in enumerate(self.blocks):
            _, mid, out_ch, _ = block_channels(self.space, b, cfg.expand[b])
            w, a = cfg.w_bits[b], cfg.a_bits[b]
            block.expand.set_active(mid, 1, q(w[0]), q(a[0]))
            block.depthwise.set_active(mid, cfg.kernel[b], q(w[1]), q(a[1]))
            block.project.set_active(out_ch, 1, q(w[2]), q(a[2]))
        self.final_expand.set_active(self.space.final_expand_width, 1, q(cfg.final_w_bits), q(cfg.final_a_bits))
        self.feature_mix.weight_quant.bits, self.feature_mix.act_quant.bits = q(cfg.mix_w_bits), q(cfg.mix_a_bits)
        for conv in (self.stem, self.classifier):
            conv.weight_quant.bits = conv.act_quant.bits = q(self.space.fixed_bits)
        if self.float_stem:
            self.stem.weight_quant.bits = self.stem.act_quant.bits = None

    def running_blocks(self) -> list[MBConv]:
        return [self.blocks[i] for i in self.active.active_blocks()]

    @torch.no_grad()
    def init_weight_steps(self) -> None:
        """Re-initialise every LSQ step from the current weights, as the seed does when its quantized
        training starts (``train`` at the end of the float phase, ``convert ofa-checkpoint``).

        Each conv's steps from its whole (maximal) weight; a depthwise conv with one quantizer per kernel
        size initialises each size's steps on that size's kernel, the centre of the larger one passed
        through the kernel transforms (the weight that size's subnets quantize), every channel.
        """
        for module in self.modules():
            if isinstance(module, ElasticQuantConv) and "per_kernel" in module._modules:
                active = module.active_kernel
                for k in module.kernel_choices:  # every kernel size's, not only the active one
                    module.active_kernel = k
                    module.weight_quant.init_steps(module.active_weight(module.in_channels))
                module.active_kernel = active
            elif isinstance(module, QuantConv):  # ElasticQuantConv with one pair included
                module.weight_quant.init_steps(module.weight)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """No weight decay on BN, biases, quantizer parameters and kernel transforms."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            is_weight = name.endswith(".weight") and p.ndim == 4 and "transforms" not in name
            (decay if is_weight else no_decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


