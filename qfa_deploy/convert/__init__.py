"""Converters from the seed's (apple/ml-batchquant) formats into qfa-deploy's, one module per format.

- ``qfa_gene``: the seed's 176-integer gene (``pareto_archs.npy`` rows) <-> ``ArchConfig``.
- ``qfa_checkpoint``: the seed's supernet state dict (``b234_ps.pth``) -> a ``qfa-mbv3-w1.2`` checkpoint.
- ``ofa_checkpoint``: OFA's float supernet (``ofa_mbv3_d234_e346_k357_w1.2``) -> a ``qfa-mbv3-w1.2`` warm
  start, quantizers initialised as the seed's training does.
- ``qfa_samples``: the seed's measured (subnet, accuracy) samples -> ``collect`` records (acc.jsonl).
"""
