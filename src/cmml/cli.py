"""`cmml` command line: one subcommand per pipeline stage, plus audit, check and dvc-yaml.

Stage subcommands take the stage's identity (method, setting, seed, task), look the stage up
in the plan built from params.yaml (deps, outs, params keys) and run its handler. Heavy
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

# stage kind -> module whose ``run(stage, params)`` executes it
HANDLERS = {
    "prepare": "cmml.data.prepare",
    "tasks": "cmml.data.tasks",
    "missing": "cmml.data.missing",
    "pretrain": "cmml.models.pretrain",
    "train": "cmml.train.stage",
    "evaluate": "cmml.eval.stage",
    "aggregate": "cmml.report.aggregate",
    "report": "cmml.report.report",
}


def stage_name(kind: str, a: argparse.Namespace) -> str:
    """The plan name of the stage selected by the CLI arguments."""
    if kind == "missing":
        return f"missing/{a.setting}/seed{a.seed}"
    if kind in ("train", "evaluate"):
        row = "init" if a.task == -1 else f"task{a.task}"
        return f"{kind}/{a.setting}/{a.method}/seed{a.seed}/{row}"
    return kind


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cmml", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for kind in HANDLERS:
        s = sub.add_parser(kind, help=f"run the {kind} stage")
        s.add_argument("--params", default="params.yaml")
        if kind in ("missing", "train", "evaluate"):
            s.add_argument("--setting", required=True)
            s.add_argument("--seed", type=int, required=True)
        if kind in ("train", "evaluate"):
            s.add_argument("--method", required=True, help="a run name under 'methods' in params.yaml")
            s.add_argument("--task", type=int, required=True, help="task index (-1: the untrained model)")
    w = sub.add_parser("worker", help="serve model stages from a warm process (started automatically)")
    w.add_argument("--socket", required=True)
    w.add_argument("--idle", type=float, default=120.0, help="exit after this many idle seconds")
    a = sub.add_parser("audit", help="verify the provenance chain of an artefact")
    a.add_argument("paths", nargs="+")
    a.add_argument("--params", default="params.yaml")
    a.add_argument("--quiet", action="store_true")
    c = sub.add_parser("check", help="validate params.yaml and print the planned stages")
    c.add_argument("--params", default="params.yaml")
    d = sub.add_parser("dvc-yaml", help="write (or --check) dvc.yaml from the stage plan")
    d.add_argument("--params", default="params.yaml")
    d.add_argument("--output", default="dvc.yaml")
    d.add_argument("--check", action="store_true", help="exit 1 if the file differs from the plan")
    return p


def run_stage(kind: str, args: argparse.Namespace) -> None:
    """Validate params, find the stage in the plan, run its handler."""
    from cmml.config import load_params
    from cmml.pipeline.plan import find, plan
    from cmml.provenance.sidecar import mark_stage_start

    mark_stage_start()
    params = load_params(args.params)
    if os.environ.get("DVC_STAGE"):
        from cmml.pipeline.dvcgen import check_current

        check_current(args.params)
    stage = find(plan(params, args.params), stage_name(kind, args))
    importlib.import_module(HANDLERS[kind]).run(stage, params)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cmml` console script and of `python -m cmml`."""
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGTERM, _terminate)  # clean up temp outputs when Snakemake/DVC stop a job
    from cmml.pipeline.worker import delegate

    code = delegate(argv)
    if code is not None:
        return code
    args = _parser().parse_args(argv)
    try:
        if args.command == "worker":
            from pathlib import Path

            from cmml.pipeline.worker import serve

            return serve(Path(args.socket), args.idle)
        if args.command in HANDLERS:
            run_stage(args.command, args)
            return 0
        if args.command == "audit":
            from cmml.provenance.audit import main as audit_main

            return audit_main(args.paths, params_file=args.params, quiet=args.quiet)
        if args.command == "check":
            return _check(args.params)
        if args.command == "dvc-yaml":
            from cmml.pipeline.dvcgen import main as dvc_main

            return dvc_main(args.params, args.output, check=args.check)
    except CmmlError as exc:
        print(f"cmml {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 1


def _terminate(signum: int, _frame: object) -> None:
    """SIGTERM -> SystemExit, so context managers remove half-written temp outputs."""
    raise SystemExit(128 + signum)


def _check(params_file: str) -> int:
    from cmml.config import load_params
    from cmml.methods.registry import resolve_hparams
    from cmml.pipeline.plan import plan

    params: dict[str, Any] = load_params(params_file)
    for run in params["methods"]:
        resolve_hparams(params, run, params_file)
    stages = plan(params, params_file)
    kinds: dict[str, int] = {}
    for s in stages:
        kinds[s.kind] = kinds.get(s.kind, 0) + 1
    print(f"{params_file}: valid; {len(stages)} stages: " + ", ".join(f"{k} {n}" for k, n in kinds.items()))
    return 0
