# One rule per planned stage; each rule only calls the stage's CLI (the command is passed
# through params because a loop variable in shell: would be bound late).


for _stage in STAGES:

    rule:
        name:
            _stage.rule_name
        input:
            _stage.deps,
        output:
            stage_outputs(_stage),
        params:
            cmd=_stage.shell,
            values=stage_params(_stage),
        threads: stage_threads(_stage)
        resources:
            gpu=1 if _stage.gpu else 0,
        shell:
            "{params.cmd}"
