# One rule per planned stage; each rule only calls the stage's CLI (the command is passed
# through params because a loop variable in shell: would be bound late). Output goes to the
# terminal and to logs/<stage>.log (one line per epoch for model stages).


for _stage in STAGES:

    rule:
        name:
            _stage.rule_name
        input:
            _stage.all_deps,
            PARAMS_STAMPS.get(_stage.name, []),
        output:
            stage_outputs(_stage),
        params:
            cmd=_stage.shell,
            values=stage_params(_stage),
        localrule: not _stage.gpu  # bookkeeping stays on the submitting node under a cluster executor
        log:
            f"logs/{_stage.name}.log",
        threads: stage_threads(_stage)
        priority: PRIORITY[_stage.name]
        resources:
            gpu=_stage.nproc if _stage.gpu else 0,
        conda:
            "../envs/cmml.yaml"
        shell:
            "{params.cmd} 2>&1 | tee {log}"
