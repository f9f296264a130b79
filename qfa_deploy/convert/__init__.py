"""Converters from the seed's (apple/ml-batchquant) formats into qfa-deploy's, one module per format.

- ``qfa_gene``: the seed's 176-integer gene (``pareto_archs.npy`` rows) <-> ``ArchConfig``.
"""
