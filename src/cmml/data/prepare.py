"""Stage handler ``data/prepare``: the benchmark the plan names writes the internal format.

Outputs (``runs/data/<benchmark>/prepared``): ``{split}.parquet`` (sample_id, image PNG bytes,
text, labels, primary), ``vocab.txt`` (BERT-style) and ``manifest.json`` (sizes, sha256 of every
file, class structure, modalities). The benchmark module is given by the plan
(``stage.args['benchmark_module']``), so its code is part of this stage's code identity.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cmml.config import benchmark_id
from cmml.provenance.sidecar import stage_run

if TYPE_CHECKING:
    from cmml.pipeline.stage import Stage


def run(stage: Stage, params: dict[str, Any]) -> None:
    """Prepare the benchmark into the stage's output directory."""
    bench = params["benchmark"]
    benchmark = importlib.import_module(stage.args["benchmark_module"]).BENCHMARK
    benchmark.validate(bench, "params.yaml")
    with stage_run(stage, params, seed=bench["seed"], extra={"benchmark": benchmark.NAME}) as sr:
        manifest = benchmark.prepare(sr.tmp(stage.outs[0]), bench, benchmark_id(params))
        sr.extra["counts"] = {s: r["count"] for s, r in manifest["splits"].items()}
