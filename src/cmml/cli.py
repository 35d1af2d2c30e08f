"""`cmml` command line: ``run <stage>`` (every pipeline stage), plus audit, check, list and dvc-yaml.

``cmml run NAME`` rebuilds the stage plan from the params file, finds the stage called NAME
(``cmml list`` prints them) and calls ``run(stage, params)`` of the stage's handler module. Heavy
imports (torch, transformers) happen only inside the handlers that need them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from typing import Any

from cmml.errors import CmmlError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cmml", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run one stage of the plan by name")
    r.add_argument("name", help="stage name, e.g. cmml/run/both70/rebq/seed0 (see `cmml list`)")
    r.add_argument("--params", default="params.yaml")
    r.add_argument("--plan", help="the digest of the stage's arguments its command was generated with (checked)")
    ls = sub.add_parser("list", help="print the planned stage names")
    ls.add_argument("--params", default="params.yaml")
    w = sub.add_parser("worker", help="serve model stages from a warm process (started automatically)")
    w.add_argument("--socket", required=True)
    w.add_argument("--idle", type=float, default=120.0, help="exit after this many idle seconds")
    a = sub.add_parser("audit", help="verify the provenance chain of an artefact")
    a.add_argument("paths", nargs="+")
    a.add_argument("--params", default="params.yaml")
    a.add_argument("--quiet", action="store_true")
    c = sub.add_parser("check", help="validate params.yaml (every method's hyper-parameters too) and count the stages")
    c.add_argument("--params", default="params.yaml")
    stt = sub.add_parser("status", help="per family and experiment: stages done, stale (params/code/data) or missing")
    stt.add_argument("--params", default="params.yaml")
    lk = sub.add_parser("dvc-lock", help="write dvc.lock and fill the DVC cache from the sidecars (after a Snakemake run)")
    lk.add_argument("--params", default="params.yaml")
    pub = sub.add_parser("publish", help="copy a finished results/ to reference/ (the committed results)")
    pub.add_argument("--results", default="results")
    pub.add_argument("--reference", default="reference")
    cmp_ = sub.add_parser("compare", help="compare results/ with reference/ per metric (difference in std units)")
    cmp_.add_argument("--results", default="results")
    cmp_.add_argument("--reference", default="reference")
    d = sub.add_parser("dvc-yaml", help="write (or --check) dvc.yaml and pipelines/**/dvc.yaml from the stage plan")
    d.add_argument("--params", default="params.yaml")
    d.add_argument("--check", action="store_true", help="exit 1 if a file differs from the plan")
    return p


def run_stage(name: str, params_file: str, digest: str | None = None) -> int:
    """Validate params, find the stage in the plan, run its handler; the exit code.

    A stage planned for several processes (``runtime.nproc_per_stage``) is started as that many
    ranks of this same command (:func:`cmml.train.distributed.launch`) unless this is one of them.
    """
    from cmml.pipeline.plan import find, load, plan
    from cmml.pipeline.worker import spawn
    from cmml.provenance.sidecar import mark_dispatch_done, mark_stage_start

    mark_stage_start()
    params = load(params_file)
    if os.environ.get("DVC_STAGE"):
        from cmml.pipeline.dvcgen import check_current

        check_current(params_file)
    stage = find(plan(params, params_file), name)
    if digest is not None and digest != stage.args_digest:
        from cmml.errors import ConfigError

        raise ConfigError(f"stage {name}: its command was generated for another plan (--plan {digest}; the plan of "
                          f"{params_file} gives {stage.args_digest}): run `cmml dvc-yaml` and then the tool again")
    spawn()  # later stages of this project run in a warm process (a no-op while one serves it)
    if stage.nproc > 1 and "LOCAL_RANK" not in os.environ:
        from cmml.train.distributed import launch

        return launch(stage.cmd[1:], stage.nproc, name)
    mark_dispatch_done()
    importlib.import_module(stage.handler).run(stage, params)
    return 0


def preload() -> None:
    """What a worker imports once for every model stage (no CUDA, no torch op)."""
    import pkgutil

    import cmml.models.pretrain  # noqa: F401
    from cmml.families.registry import FAMILIES

    for fam in FAMILIES:  # every family's stage handlers
        pkg = importlib.import_module(f"cmml.families.{fam}")
        for mod in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{pkg.__name__}.{mod.name}")
    from cmml.methods.registry import METHODS, get_method

    for name in METHODS:
        get_method(name)
    import pandas  # noqa: F401 - the split readers
    import pyarrow.dataset  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import torchmetrics.functional.classification  # noqa: F401
    from transformers import ViltConfig, ViltModel, get_cosine_schedule_with_warmup  # noqa: F401 - lazy attributes
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    from cmml.pipeline.sources import all_modules, closure

    get_checkpoint_conversion_mapping("vilt")  # builds transformers' weight-renaming table (~0.3 s) once, not per load
    closure(all_modules())  # parses every module once: each stage's plan derives code deps from the same trees
    from cmml.families.micl.methods.registry import METHODS as MICL_METHODS
    from cmml.families.micl.methods.registry import method_class

    for name in MICL_METHODS:
        method_class(name)
    from peft import LoraConfig, get_peft_model  # noqa: F401
    from transformers import AutoModelForCausalLM, GPT2LMHeadModel  # noqa: F401 - lazy attributes


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cmml` console script and of `python -m cmml`."""
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGTERM, _terminate)  # clean up temp outputs when Snakemake/DVC stop a job
    if argv[:1] == ["run"]:
        from cmml.pipeline.workspace import check_stage
        from cmml.pipeline.worker import delegate

        try:
            if os.environ.get("CMML_IN_WORKER") != "1":  # the client already checked
                check_stage()
        except CmmlError as exc:
            print(f"cmml run: error: {exc}", file=sys.stderr)
            return 2
        code = delegate(argv)
        if code is not None:
            return code
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return run_stage(args.name, args.params, args.plan)
        if args.command == "worker":
            from pathlib import Path

            from cmml.pipeline.worker import serve

            return serve(Path(args.socket), main, preload, args.idle)
        if args.command == "audit":
            from cmml.provenance.audit import main as audit_main

            return audit_main(args.paths, params_file=args.params, quiet=args.quiet)
        if args.command in ("publish", "compare"):
            from pathlib import Path

            from cmml.report.compare import main_compare, publish

            if args.command == "publish":
                return publish(Path(args.results), Path(args.reference))
            return main_compare(args.reference, args.results)
        if args.command == "status":
            from cmml.pipeline.status import main as status_main

            return status_main(args.params)
        if args.command == "dvc-lock":
            from cmml.provenance.dvclock import main as lock_main

            return lock_main(args.params)
        if args.command == "list":
            return _list(args.params)
        if args.command == "check":
            return _check(args.params)
        if args.command == "dvc-yaml":
            from cmml.pipeline.dvcgen import main as dvc_main

            return dvc_main(args.params, check=args.check)
    except CmmlError as exc:
        print(f"cmml {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 1


def _terminate(signum: int, _frame: object) -> None:
    """SIGTERM -> SystemExit, so context managers remove half-written temp outputs."""
    raise SystemExit(128 + signum)


def _list(params_file: str) -> int:
    from cmml.pipeline.plan import load, plan

    for s in plan(load(params_file), params_file):
        print(s.name)
    return 0


def _check(params_file: str) -> int:
    from cmml.families.registry import active, family
    from cmml.pipeline.plan import load, plan

    params: dict[str, Any] = load(params_file)
    for name in active(params):
        fam = family(name)
        if hasattr(fam, "check_hparams"):
            fam.check_hparams(params, params_file)
    stages = plan(params, params_file)
    groups: dict[str, int] = {}
    for s in stages:
        key = "/".join(s.name.split("/")[:2])
        groups[key] = groups.get(key, 0) + 1
    print(f"{params_file}: valid; {len(stages)} stages: " + ", ".join(f"{k} {n}" for k, n in groups.items()))
    return 0
