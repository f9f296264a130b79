"""Quantizers: LSQ for weights, BatchQuant (or, for the ablation, LSQ-style) for activations."""

from qfa_deploy.errors import QfaError
from qfa_deploy.quant.batchquant import BatchQuant, FixedActQuant
from qfa_deploy.quant.lsq import LSQ
from qfa_deploy.quant.lsq_act import LSQAct

__all__ = ["ACT_QUANTIZERS", "LSQ", "BatchQuant", "FixedActQuant", "LSQAct", "act_quantizer_class"]

ACT_QUANTIZERS = {"batchquant": BatchQuant, "lsq": LSQAct}


def act_quantizer_class(name: str) -> type:
    try:
        return ACT_QUANTIZERS[name]
    except KeyError:
        raise QfaError(f"unknown activation quantizer {name!r} (known: {', '.join(ACT_QUANTIZERS)})") from None
