"""Experiment families: each a package with its params section, plan, aggregation and report section.

The registry lives in :mod:`cmml.families.registry`; this file stays empty so that adding a
family (one registry line) changes no stage's code identity.
"""
