# cmml workflow: the same stage plan as dvc.yaml (see src/cmml/pipeline/plan.py).
# Usage: snakemake --cores N   (configuration: params.yaml only)
configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/stages.smk"


rule all:
    default_target: True
    input:
        [o for s in STAGES if s.kind in ("aggregate", "report") for o in s.outs],
