# Load and validate params.yaml, forbid --config overrides, build the stage plan.
import json

import yaml

from cmml.config import subset, validate
from cmml.errors import CmmlError
from cmml.pipeline.plan import plan

PARAMS_FILE = "params.yaml"

with open(PARAMS_FILE) as _fh:
    if config != yaml.safe_load(_fh):
        raise WorkflowError(
            f"the Snakemake config differs from {PARAMS_FILE}: edit {PARAMS_FILE} instead of passing "
            "--config/--configfile (the stage commands and DVC read the file, so overrides would be ignored)"
        )
try:
    validate(config, PARAMS_FILE)
    STAGES = plan(config, PARAMS_FILE)
except CmmlError as _exc:
    raise WorkflowError(str(_exc))


def stage_params(stage):
    """Stable serialisation of the params a stage reads: Snakemake's params trigger sees what DVC sees."""
    return json.dumps(subset(config, stage.params), sort_keys=True)


def stage_outputs(stage):
    return [directory(o) if o in stage.dir_outs else o for o in stage.outs]


def stage_threads(stage):
    return (config["runtime"]["threads"] or workflow.cores) if stage.gpu else 1
