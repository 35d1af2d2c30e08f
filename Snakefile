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


onstart:
    # Snakemake's job rate limiter (--max-jobs-per-timespan, default 100/1s) re-runs the job selector
    # from a timer after every scheduling round, and each timer's round starts another: the timers add
    # up with every finished job, so on a 2-core run of the default DAG the scheduler alone burned
    # ~200 s of CPU. A local run submits far fewer than 100 jobs per second, so the limiter is dropped
    # there; a cluster executor keeps it (it protects the cluster's scheduler).
    if workflow.local_exec and getattr(workflow, "scheduler", None) is not None:
        workflow.scheduler.job_rate_limiter = None


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
