"""Benchmark registry: ``benchmark.name`` -> the module defining ``BENCHMARK``.

Adding a benchmark = one module under :mod:`cmml.data.benchmarks`, one line here, its keys in
params.yaml and its test (real readers are tested on small fixtures in the real on-disk format).
The prepare stage is given the module by the plan and never imports this file.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from cmml.errors import ConfigError

if TYPE_CHECKING:
    from cmml.data.benchmarks.base import Benchmark

BENCHMARKS: dict[str, str] = {
    "embedded": "cmml.data.benchmarks.embedded",
    "mmimdb": "cmml.data.benchmarks.mmimdb",
    "food101": "cmml.data.benchmarks.food101",
    "hateful_memes": "cmml.data.benchmarks.hateful_memes",
    "manifest": "cmml.data.benchmarks.manifest",
}


def module_of(name: str) -> str:
    """The module of benchmark ``name``; ConfigError naming the known ones otherwise."""
    if name not in BENCHMARKS:
        raise ConfigError(f"key 'benchmark.name' is {name!r}: no such benchmark in this version; "
                          f"known: {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]


def load(module: str) -> Benchmark:
    """The ``BENCHMARK`` object of a benchmark module."""
    return importlib.import_module(module).BENCHMARK
