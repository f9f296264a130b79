"""The seed's supernet checkpoint (``b234_ps.pth``: ``{"state_dict": ...}`` of its ``QFAMobileNetV3``,
W1.2, bits {2, 3, 4}) -> a qfa-deploy checkpoint of ``qfa-mbv3-w1.2``.

Every tensor of the seed is either mapped or known to be unused; anything else, a missing key or a
wrong shape is a one-line ``QfaError`` before anything is written. The mapping, per conv (read from
the seed's ``dynamic_q_op`` / ``dynamic_q_layers`` / ``qfa_mbv3``):

==============================================================  =========================================
seed                                                            qfa-deploy
==============================================================  =========================================
``first_conv.conv``                                             ``stem``
``blocks.0.mobile_inverted_conv.{depth_conv,point_linear}.conv``  ``first_block.{depthwise,project}``
``blocks.N.mobile_inverted_conv.inverted_bottleneck.conv``      ``blocks.{N-1}.expand``
``blocks.N.mobile_inverted_conv.depth_conv.conv``               ``blocks.{N-1}.depthwise``
``blocks.N.mobile_inverted_conv.depth_conv.se.fc.{reduce,expand}``  ``blocks.{N-1}.se.{reduce,expand}``
``blocks.N.mobile_inverted_conv.point_linear.conv``             ``blocks.{N-1}.project``
``final_expand_layer.conv`` / ``feature_mix_layer.conv``        ``final_expand`` / ``feature_mix``
``classifier.linear`` (a linear layer)                          ``classifier`` (a 1x1 conv, same numbers)
``conv.weight``; ``gamma``, ``beta``, ``running_mean/var``      ``weight``; ``bn.weight``, ``bn.bias``, ...
``7to5_matrix`` / ``5to3_matrix`` (applied as ``F.linear``)     ``transforms.5`` / ``transforms.3``, transposed
``w_quantizer(s[K]).quantizers[b].scale`` (LSQ step)            ``(per_kernel.K.)weight_quant.step[b]``
``a_quantizer(s[K]).quantizers[b].{scale,offset}``              ``(per_kernel.K.)act_quant.{scale_param,offset}[b]``
``...quantizers[b].observer.running_{min,max}``                 ``act_quant.running_{min,max}[b]``, clamped to
                                                                include 0 (the seed clamps when it uses them)
==============================================================  =========================================

Not used (the seed never runs them in a gene's subnet): the 8-bit quantizers of the elastic convs,
the 2-4-bit ones of the classifier, every quantizer of the first conv (the seed runs it in float) and
the observers' ``min_val``/``max_val`` (last-batch copies). The seed quantizes some conv inputs on a
signed grid ``[-2^(b-1), 2^(b-1)-1]`` with zero point ``qmin - round(min/s)``; qfa-deploy's grid is
unsigned with ``round(-min/s)``: the same codes shifted by ``2^(b-1)``, so the same parameters
quantize the same way. The stem is 8-bit here: its weight step is ``max|w| / 127`` and its input
range the image normalisation's (what per-channel min/max averaged over channels gives on images).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from qfa_deploy.checkpoint import read_torch_file, save_checkpoint
from qfa_deploy.errors import QfaError

__all__ = ["SEED_BITS", "convert_state", "convert_file", "read_seed_state"]

SEED_SPACE = "qfa-mbv3-w1.2"
SEED_BITS = (2, 3, 4)
_FIXED = 8  # the seed's classifier runs at 8 bits (override_quantizer)

# Seed keys that are known and deliberately not carried over.
_UNUSED = (
    re.compile(r"first_conv\.conv\.[wa]_quantizer\..*"),  # the seed's stem runs in float
    re.compile(r".*\.observer\.(min|max)_val"),  # the last batch's range, replaced by running_* in eval
    re.compile(r"(?!classifier\.).*\.quantizers\.8\..*"),  # elastic convs: 8 bits is not a gene choice
    re.compile(r"classifier\.linear\.[wa]_quantizer\.quantizers\.[234]\..*"),  # the classifier is 8-bit
)


def read_state_dict(path: Path, expected: str, not_ours: str = "") -> dict[str, torch.Tensor]:
    """The tensors of a foreign state-dict file (``{"state_dict": ...}`` or bare, ``module.`` prefixes
    dropped), read with ``weights_only``. A qfa-deploy checkpoint (``not_ours`` appended to that
    message) or anything but a dict of tensors is a one-line QfaError naming ``expected``."""
    payload = read_torch_file(path)
    if isinstance(payload, dict) and payload.get("format") == "qfa-supernet":
        raise QfaError(f"{path}: already a qfa-deploy checkpoint (of space {payload.get('space')!r}){not_ours}")
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not state or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise QfaError(f"{path}: not {expected} (no state_dict of tensors)")
    if all(k.startswith("module.") for k in state):  # saved from a DataParallel wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def read_seed_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The seed's state dict in ``path`` (``{"state_dict": ...}`` or a bare state dict), read with
    ``weights_only`` (a pickle that holds code is refused); every problem is a one-line QfaError."""
    path = Path(path)
    state = read_state_dict(path, "a seed supernet checkpoint")
    if not any(k.startswith("blocks.") and ".mobile_inverted_conv." in k for k in state):
        raise QfaError(f"{path}: not a seed QFAMobileNetV3 state dict (no blocks.N.mobile_inverted_conv.* keys)")
    return state


class _Mapper:
    """Copies tensors of a foreign state dict (``seed``) into qfa-deploy's keys (``target``: names and
    shapes), each checked; ``what`` names the complete source in the missing-key message."""

    def __init__(self, seed: dict[str, torch.Tensor], target: dict[str, torch.Tensor], where: str,
                 what: str = "a complete W1.2 bits-{2,3,4} seed supernet") -> None:
        self.seed, self.target, self.where, self.what = seed, target, where, what
        self.out: dict[str, torch.Tensor] = {}
        self.used: set[str] = set()

    def take(self, key: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        value = self.seed.get(key)
        if value is None:
            raise QfaError(f"{self.where}: missing key {key} (not {self.what})")
        if shape is not None and tuple(value.shape) != tuple(shape):
            raise QfaError(f"{self.where}: {key} has shape {list(value.shape)}, the W1.2 supernet's is {list(shape)}")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise QfaError(f"{self.where}: {key} holds non-finite values")
        self.used.add(key)
        return value.float() if value.is_floating_point() else value

    def put(self, key: str, value: torch.Tensor) -> None:
        expected = self.target[key]
        value = value.to(expected.dtype).reshape(expected.shape) if value.numel() == expected.numel() else value
        if tuple(value.shape) != tuple(expected.shape):  # a programming error of the mapping, not user input
            raise AssertionError(f"{key}: {tuple(value.shape)} vs {tuple(expected.shape)}")
        self.out[key] = value.clone()

    def weight(self, src: str, dst: str) -> None:
        self.put(dst, self.take(src, tuple(self.target[dst].shape)))

    def bn(self, src: str, dst: str, affine: tuple[str, str] = ("gamma", "beta")) -> None:
        c = tuple(self.target[f"{dst}.bn.weight"].shape)
        self.put(f"{dst}.bn.weight", self.take(f"{src}.{affine[0]}", c))
        self.put(f"{dst}.bn.bias", self.take(f"{src}.{affine[1]}", c))
        for name in ("running_mean", "running_var"):
            self.put(f"{dst}.bn.{name}", self.take(f"{src}.{name}", c))
        self.put(f"{dst}.bn.num_batches_tracked", self.take(f"{src}.num_batches_tracked", ()))

    def weight_quant(self, src: str, dst: str, bits: tuple[int, ...]) -> None:
        steps = [self.take(f"{src}.quantizers.{b}.scale", (1,)) for b in bits]
        self.put(f"{dst}.step", torch.cat(steps))

    def act_quant(self, src: str, dst: str, bits: tuple[int, ...]) -> None:
        cols = {name: [] for name in ("scale_param", "offset", "running_min", "running_max", "num_batches_tracked")}
        for b in bits:
            q = f"{src}.quantizers.{b}"
            cols["scale_param"].append(self.take(f"{q}.scale", (1,)).reshape(()))
            cols["offset"].append(self.take(f"{q}.offset", (1,)).reshape(()))
            # the seed averages the raw batch ranges and includes 0 when it computes its qparams
            cols["running_min"].append(self.take(f"{q}.observer.running_min", (1,)).reshape(()).clamp(max=0.0))
            cols["running_max"].append(self.take(f"{q}.observer.running_max", (1,)).reshape(()).clamp(min=0.0))
            cols["num_batches_tracked"].append(self.take(f"{q}.observer.num_batches_tracked", ()).reshape(()))
        for name, values in cols.items():
            self.put(f"{dst}.{name}", torch.stack(values))

    def conv(self, src: str, dst: str, bn: bool = True) -> None:
        """A seed ``DynamicPointQConv2d`` into a qfa-deploy (elastic) conv with one quantizer pair."""
        self.weight(f"{src}.conv.weight", f"{dst}.weight")
        if bn:
            self.bn(src, dst)
        self.weight_quant(f"{src}.w_quantizer", f"{dst}.weight_quant", SEED_BITS)
        self.act_quant(f"{src}.a_quantizer", f"{dst}.act_quant", SEED_BITS)

    def kernel_transforms(self, src: str, dst: str) -> None:
        """The 7x7->5x5 and 5x5->3x3 kernel matrices of depthwise conv ``src`` into ``dst.transforms``:
        OFA and the seed apply ``F.linear(flat, M) = flat @ M.T``, qfa-deploy ``flat @ T``, so ``T = M.T``."""
        for small, large in ((3, 5), (5, 7)):
            n = small * small
            self.put(f"{dst}.transforms.{small}", self.take(f"{src}.{large}to{small}_matrix", (n, n)).t())

    def squeeze_excite(self, src: str, dst: str) -> None:
        """``src.fc.{reduce,expand}`` into ``dst.{reduce,expand}`` (weights and biases), if the block has SE."""
        if f"{dst}.reduce.weight" not in self.target:
            return
        for part in ("reduce", "expand"):
            for name in ("weight", "bias"):
                self.weight(f"{src}.fc.{part}.{name}", f"{dst}.{part}.{name}")

    def linear_classifier(self, src: str) -> None:
        """A linear layer ``src`` into qfa-deploy's 1x1-conv ``classifier`` (the same numbers)."""
        shape = tuple(self.target["classifier.weight"].shape)
        self.put("classifier.weight", self.take(f"{src}.weight", shape[:2]))
        self.weight(f"{src}.bias", "classifier.bias")

    def refuse_unknown(self, unused: tuple[re.Pattern, ...], source: str) -> None:
        """A QfaError naming the first tensor of the foreign state dict that was neither mapped nor
        matches a known-unused pattern (``source`` says what it is not part of)."""
        left = [k for k in self.seed if k not in self.used and not any(p.fullmatch(k) for p in unused)]
        if left:
            more = f" (and {len(left) - 1} more)" if len(left) > 1 else ""
            raise QfaError(f"{self.where}: unknown key {left[0]}{more}: not part of {source}")


def convert_state(seed: dict[str, torch.Tensor], where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The ``qfa-mbv3-w1.2`` supernet state dict equal to the seed's ``seed`` (see the module docstring)."""
    from qfa_deploy.nn.supernet import QFASupernet
    from qfa_deploy.space import create_space

    space = create_space(SEED_SPACE)
    if space.bit_choices != SEED_BITS or space.kernel_choices != (3, 5, 7):
        raise AssertionError("the seed's choices changed in qfa-deploy's space")
    target = QFASupernet(space).state_dict()
    m = _Mapper(seed, target, where)
    _map_stem(m, space)
    _map_first_block(m)
    for b in range(space.num_blocks):
        _map_block(m, f"blocks.{b + 1}.mobile_inverted_conv", f"blocks.{b}", space.kernel_choices)
    m.conv("final_expand_layer.conv", "final_expand")
    m.conv("feature_mix_layer.conv", "feature_mix", bn=False)
    m.linear_classifier("classifier.linear.linear")
    m.weight_quant("classifier.linear.w_quantizer", "classifier.weight_quant", (_FIXED,))
    m.act_quant("classifier.linear.a_quantizer", "classifier.act_quant", (_FIXED,))
    m.refuse_unknown(_UNUSED, "the seed's W1.2 supernet")
    missing = [k for k in target if k not in m.out]
    if missing:  # every target tensor is written above: a gap is a bug of this module
        raise AssertionError(f"not mapped: {missing[:3]}")
    return m.out


def _map_stem(m: _Mapper, space) -> None:
    """The seed's first conv (float there); 8-bit here, its weight step ``max|w| / 127`` and its input
    range the image normalisation's."""
    m.weight("first_conv.conv.conv.weight", "stem.weight")
    m.bn("first_conv.conv", "stem")
    w = m.out["stem.weight"].double()
    m.put("stem.weight_quant.step", (w.abs().max().clamp_min(1e-8) / (2 ** (_FIXED - 1) - 1)).reshape(1))
    mean, std = torch.tensor(space.image_mean, dtype=torch.float64), torch.tensor(space.image_std, dtype=torch.float64)
    m.put("stem.act_quant.scale_param", torch.zeros(1))
    m.put("stem.act_quant.offset", torch.zeros(1))
    m.put("stem.act_quant.running_min", (-mean / std).mean().clamp(max=0.0))
    m.put("stem.act_quant.running_max", ((1 - mean) / std).mean().clamp(min=0.0))
    m.put("stem.act_quant.num_batches_tracked", torch.tensor(1))


def _map_first_block(m: _Mapper) -> None:
    """The first block: depthwise 3x3 (one kernel size: one quantizer pair) and project."""
    src = "blocks.0.mobile_inverted_conv"
    dw = f"{src}.depth_conv.conv"
    m.weight(f"{dw}.conv.weight", "first_block.depthwise.weight")
    m.bn(dw, "first_block.depthwise")
    m.weight_quant(f"{dw}.w_quantizers.3", "first_block.depthwise.weight_quant", SEED_BITS)
    m.act_quant(f"{dw}.a_quantizers.3", "first_block.depthwise.act_quant", SEED_BITS)
    m.conv(f"{src}.point_linear.conv", "first_block.project")


def _map_block(m: _Mapper, src: str, dst: str, kernels: tuple[int, ...]) -> None:
    """An elastic block: expand, depthwise (kernel transforms, a quantizer pair per kernel size), SE, project."""
    m.conv(f"{src}.inverted_bottleneck.conv", f"{dst}.expand")
    dw = f"{src}.depth_conv.conv"
    m.weight(f"{dw}.conv.weight", f"{dst}.depthwise.weight")
    m.bn(dw, f"{dst}.depthwise")
    m.kernel_transforms(dw, f"{dst}.depthwise")
    for k in kernels:
        m.weight_quant(f"{dw}.w_quantizers.{k}", f"{dst}.depthwise.per_kernel.{k}.weight_quant", SEED_BITS)
        m.act_quant(f"{dw}.a_quantizers.{k}", f"{dst}.depthwise.per_kernel.{k}.act_quant", SEED_BITS)
    m.squeeze_excite(f"{src}.depth_conv.se", f"{dst}.se")
    m.conv(f"{src}.point_linear.conv", f"{dst}.project")


def convert_file(source: str | Path, output: str | Path) -> int:
    """Convert ``source`` and write ``output`` atomically; returns the number of seed tensors used."""
    from qfa_deploy.nn.supernet import QFASupernet

    seed = read_seed_state(source)
    state = convert_state(seed, str(source))
    net = QFASupernet(SEED_SPACE)
    try:
        net.load_state_dict(state)  # strict: the file written is one the tools load
    except RuntimeError as exc:
        raise AssertionError(f"converted state does not load: {str(exc).splitlines()[0]}") from None
    save_checkpoint(output, SEED_SPACE, state, act_quantizer="batchquant", converted_from="apple/ml-batchquant")
    return len(seed)
