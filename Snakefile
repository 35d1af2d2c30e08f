# cmml workflow: the same stage plan as dvc.yaml (see src/cmml/pipeline/plan.py).
# Usage: snakemake --cores N   (configuration: params.yaml only)
configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/stages.smk"


CONSUMED = {d for s in STAGES for d in s.all_deps}


rule all:
    default_target: True
    localrule: True
    input:
        # every output no other stage consumes: the results index and the params files DVC reads
        [o for s in STAGES for o in s.outs if o not in CONSUMED],


onsuccess:
    # keep DVC's view in step: dvc.lock and the DVC cache from the sidecars (see src/cmml/provenance/dvclock.py)
    if os.path.isdir(".dvc"):
        try:
            dvc_lock(PARAMS_FILE)
        except CmmlError as exc:
            print(f"cmml: dvc.lock not updated ({exc})")
    if RUN_TOKEN:
        release(RUN_TOKEN)


onerror:
    if RUN_TOKEN:
        release(RUN_TOKEN)
