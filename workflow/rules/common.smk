# Load and validate params.yaml, forbid --config overrides, build the stage plan, refresh the
# code fingerprints (see src/cmml/pipeline/fingerprints.py).
import json
import os

import yaml

from cmml.config import subset
from cmml.errors import CmmlError
from cmml.pipeline.fingerprints import refresh
from cmml.pipeline.plan import critical_depths, load, plan
from cmml.pipeline.sources import save_cache
from cmml.pipeline.status import params_stamps
from cmml.pipeline.worker import spawn
from cmml.pipeline.workspace import OWNER_ENV, claim, release
from cmml.provenance.dvclock import main as dvc_lock

PARAMS_FILE = "params.yaml"

with open(PARAMS_FILE) as _fh:
    if config != yaml.load(_fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
        raise WorkflowError(
            f"the Snakemake config differs from {PARAMS_FILE}: edit {PARAMS_FILE} instead of passing "
            "--config/--configfile (the stage commands and DVC read the file, so overrides would be ignored)"
        )
try:
    load(PARAMS_FILE)
    STAGES = plan(config, PARAMS_FILE)
except CmmlError as _exc:
    raise WorkflowError(str(_exc))
PRIORITY = critical_depths(STAGES)  # deepest first: the stages the most work waits on start early
# params edits Snakemake's own metadata cannot see (src/cmml/pipeline/status.py); a workspace-local
# concern, so not with a default storage provider (a cluster run from a bucket)
PARAMS_STAMPS = {} if workflow.storage_settings.default_storage_provider else params_stamps(STAGES, config)
_code_changed = refresh(STAGES, config)
save_cache()  # the modules' imports and fingerprints, for the next parse (src/cmml/pipeline/sources.py)
if _code_changed and os.path.isdir(".dvc"):
    try:  # code stages re-ran in place: keep dvc.lock in step with their new sidecars
        dvc_lock(PARAMS_FILE)
    except CmmlError as _exc:
        print(f"cmml: dvc.lock not updated ({_exc})")

# one run per workspace (src/cmml/pipeline/workspace.py): claimed here, released when the run ends
RUN_TOKEN = None
if not workflow.dryrun:
    try:
        RUN_TOKEN = claim("snakemake", os.getpid())
    except CmmlError as _exc:
        raise WorkflowError(str(_exc))
    os.environ[OWNER_ENV] = RUN_TOKEN
    spawn()  # the warm stage worker (src/cmml/pipeline/worker.py) preloads while the DAG is built


def stage_params(stage):
    """Stable serialisation of the params a stage reads: Snakemake's params trigger sees what DVC sees."""
    return json.dumps(subset(config, stage.params), sort_keys=True)


def stage_outputs(stage):
    outs = [directory(o) if o in stage.dir_outs else o for o in stage.outs]
    return outs if stage.sidecar in stage.outs else [*outs, stage.sidecar]


def stage_threads(stage):
    """Model stages: per process (nproc of them) its torch threads plus its DataLoader workers (Snakemake caps it at --cores)."""
    runtime = config["runtime"]
    return stage.nproc * ((runtime["threads"] or workflow.cores) + runtime["num_workers"]) if stage.gpu else 1
