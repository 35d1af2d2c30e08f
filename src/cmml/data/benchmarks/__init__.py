"""Benchmarks: one module per dataset behind :class:`cmml.data.benchmarks.base.Benchmark`.

The registry lives in :mod:`cmml.data.benchmarks.registry`; this file stays empty so that adding a
benchmark (one registry line) changes no stage's code identity.
"""
