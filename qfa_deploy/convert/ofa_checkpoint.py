"""OFA's float supernet (``ofa_mbv3_d234_e346_k357_w1.2``, mit-han-lab/once-for-all: ``{"state_dict": ...}``
or a bare state dict of its ``OFAMobileNetV3``) -> a ``qfa-mbv3-w1.2`` checkpoint to warm-start training
from, with the quantizers initialised as the seed (apple/ml-batchquant) initialises them when it
starts from that file.

Every tensor of OFA's file is mapped; anything else, a missing key or a wrong shape is a one-line
``QfaError`` before anything is written. Keys are read in both of OFA's layouts: the released file's
``blocks.N.mobile_inverted_conv.*`` and the current code's ``blocks.N.conv.*`` (``OFAMobileNetV3``'s
own ``load_state_dict`` renames the first to the second).

==============================================================  =========================================
OFA                                                             qfa-deploy
==============================================================  =========================================
``first_conv.conv.weight``, ``first_conv.bn.*``                 ``stem.weight``, ``stem.bn.*``
``blocks.0.conv.{depth_conv,point_linear}.{conv.weight,bn.*}``  ``first_block.{depthwise,project}``
``blocks.N.conv.inverted_bottleneck.{conv.conv.weight,bn.bn.*}``  ``blocks.{N-1}.expand``
``blocks.N.conv.depth_conv.{conv.conv.weight,bn.bn.*}``         ``blocks.{N-1}.depthwise``
``blocks.N.conv.depth_conv.conv.7to5_matrix`` / ``5to3_matrix``  ``blocks.{N-1}.depthwise.transforms.5`` /
(applied as ``F.linear(flat, M)``)                              ``.3``, transposed (applied as ``flat @ T``)
``blocks.N.conv.depth_conv.se.fc.{reduce,expand}.*``            ``blocks.{N-1}.se.{reduce,expand}.*``
``blocks.N.conv.point_linear.{conv.conv.weight,bn.bn.*}``       ``blocks.{N-1}.project``
``final_expand_layer.{conv.weight,bn.*}``                       ``final_expand``
``feature_mix_layer.conv.weight``                               ``feature_mix.weight``
``classifier.linear.{weight,bias}`` (a linear layer)            ``classifier.{weight,bias}`` (a 1x1 conv)
==============================================================  =========================================

Quantizers (OFA has none), as the seed's ``main.py`` phase 0 sets them: it builds its supernet, loads
OFA's weights (``load_weights_from_float_net``: nothing else is loaded), then
``set_activation_statistics(net)`` without data, which runs every LSQ weight quantizer once on its
weight; LSQ's first call sets its step to ``2 mean|w| / sqrt(qmax)``. So:

- LSQ steps, per bit choice ``b`` (``qmax = 2^(b-1) - 1``): ``2 mean|W| / sqrt(qmax)`` of the conv's whole
  (maximal) weight; for a depthwise conv, per kernel size ``k``, of the ``k x k`` kernel the kernel
  transforms make of the 7x7 one (the seed's ``get_active_filter(k)``), all channels. The stem (float
  in the seed) and the classifier get the same rule at 8 bits.
- BatchQuant: alpha's parameter 0 (alpha = softplus_ln2(0) = 1) and offset 0 per bit, the seed's
  ``FakeQuantize`` initial values; no running range (zeros, 0 batches), as the seed's observers start:
  training measures each batch's range, and ``eval``/``export`` calibrate.
"""

from __future__ import annotations

from pathlib import Path

import torch

from qfa_deploy.checkpoint import save_checkpoint
from qfa_deploy.convert.qfa_checkpoint import _Mapper, read_state_dict
from qfa_deploy.errors import QfaError

__all__ = ["OFA_SPACE", "convert_file", "convert_state", "read_ofa_state"]

OFA_SPACE = "qfa-mbv3-w1.2"
_WHAT = "a complete ofa_mbv3_d234_e346_k357_w1.2 supernet"
_RELEASED = ".mobile_inverted_conv."  # the released file's block key; OFA's current code says ".conv."


def read_ofa_state(path: str | Path) -> dict[str, torch.Tensor]:
    """OFA's state dict in ``path`` (``{"state_dict": ...}`` or bare), read with ``weights_only``, keys in
    OFA's current layout; every problem is a one-line QfaError."""
    path = Path(path)
    state = read_state_dict(path, "an OFA supernet checkpoint", not_ours=", not OFA's")
    if any("_quantizer" in k for k in state):
        raise QfaError(f"{path}: a quantized seed supernet (apple/ml-batchquant's QFAMobileNetV3), not OFA's "
                       "float one: convert it with `qfa-deploy convert qfa-checkpoint`")
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        new = k.replace(_RELEASED, ".conv.", 1) if k.startswith("blocks.") else k
        if new in out:
            raise QfaError(f"{path}: holds {new} twice (as {k} too): mixes OFA's two key layouts")
        out[new] = v
    if not any(k.startswith("blocks.") and ".conv.depth_conv." in k for k in out):
        raise QfaError(f"{path}: not an OFAMobileNetV3 state dict (no blocks.N.mobile_inverted_conv.* or "
                       "blocks.N.conv.* keys)")
    return out


def convert_state(ofa: dict[str, torch.Tensor], where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The ``qfa-mbv3-w1.2`` supernet state dict of OFA's ``ofa`` (current key layout), quantizers
    initialised as the seed's warm start does (see the module docstring)."""
    from qfa_deploy.nn.supernet import QFASupernet

    space = _ofa_space(ofa, where)
    net = QFASupernet(space)
    target = net.state_dict()
    m = _Mapper(ofa, target, where, _WHAT)
    _map_weights(m, space.num_blocks)
    m.refuse_unknown((), "OFA's W1.2 MobileNetV3 supernet")
    quantizer_keys = [k for k in target if k not in m.out]
    if any("_quant." not in k for k in quantizer_keys):  # every weight is written above: a gap is a bug here
        raise AssertionError(f"not mapped: {[k for k in quantizer_keys if '_quant.' not in k][:3]}")
    missing, unexpected = net.load_state_dict(m.out, strict=False)
    if unexpected or sorted(missing) != sorted(quantizer_keys):
        raise AssertionError(f"mapped state does not load: {unexpected[:3]} {missing[:3]}")
    _init_quantizers(net)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _ofa_space(ofa: dict[str, torch.Tensor], where: str):
    """qfa-deploy's ``OFA_SPACE``; an OFA file of another width (its stem's channels) is a QfaError."""
    from qfa_deploy.space import create_space

    space = create_space(OFA_SPACE)
    if space.kernel_choices != (3, 5, 7) or space.expand_choices != (3, 4, 6) or space.depth_choices != (2, 3, 4):
        raise AssertionError("OFA's choices changed in qfa-deploy's space")
    stem = ofa.get("first_conv.conv.weight")
    if isinstance(stem, torch.Tensor) and stem.ndim == 4 and stem.shape[0] != space.stem_width:
        raise QfaError(f"{where}: first_conv.conv.weight has {stem.shape[0]} channels: an OFA supernet of "
                       f"another width (W1.0 has 16), qfa-deploy's {OFA_SPACE} is OFA's W1.2 ({space.stem_width})")
    return space


def _map_weights(m: _Mapper, num_blocks: int) -> None:
    """Every weight, BN, kernel transform and SE tensor of OFA's supernet (see the module docstring's table)."""
    plain = ("weight", "bias")
    m.weight("first_conv.conv.weight", "stem.weight")
    m.bn("first_conv.bn", "stem", plain)
    for part, dst in (("depth_conv", "depthwise"), ("point_linear", "project")):
        m.weight(f"blocks.0.conv.{part}.conv.weight", f"first_block.{dst}.weight")
        m.bn(f"blocks.0.conv.{part}.bn", f"first_block.{dst}", plain)
    for b in range(num_blocks):
        src, dst = f"blocks.{b + 1}.conv", f"blocks.{b}"
        for part, name in (("inverted_bottleneck", "expand"), ("depth_conv", "depthwise"), ("point_linear", "project")):
            m.weight(f"{src}.{part}.conv.conv.weight", f"{dst}.{name}.weight")
            m.bn(f"{src}.{part}.bn.bn", f"{dst}.{name}", plain)
        m.kernel_transforms(f"{src}.depth_conv.conv", f"{dst}.depthwise")
        m.squeeze_excite(f"{src}.depth_conv.se", f"{dst}.se")
    m.weight("final_expand_layer.conv.weight", "final_expand.weight")
    m.bn("final_expand_layer.bn", "final_expand", plain)
    m.weight("feature_mix_layer.conv.weight", "feature_mix.weight")
    m.linear_classifier("classifier.linear")


def _init_quantizers(net) -> None:
    """The seed's phase-0 start: BatchQuant at its FakeQuantize and observer start values, LSQ steps
    from the weights."""
    from qfa_deploy.quant import BatchQuant

    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, BatchQuant):  # the seed's FakeQuantize and observer start values
                module.scale_param.zero_()
                module.offset.zero_()
                module.reset_running_stats()
    # LSQ steps on the whole weights; a depthwise conv's per kernel size on the seed's
    # get_active_filter(k), the transformed kernel: the rule train applies after its float phase
    net.init_weight_steps()


def convert_file(source: str | Path, output: str | Path) -> int:
    """Convert ``source`` and write ``output`` atomically; returns the number of OFA tensors used."""
    ofa = read_ofa_state(source)
    state = convert_state(ofa, str(source))
    save_checkpoint(output, OFA_SPACE, state, act_quantizer="batchquant", converted_from="mit-han-lab/once-for-all",
                    # train --init-from reads it: a warm start for either activation quantizer
                    warm_start="mit-han-lab/once-for-all's float supernet; quantizers as apple/ml-batchquant's phase 0")
    return len(ofa)
