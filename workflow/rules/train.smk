# One training job per run directory. The output is metrics.json, written last and atomically by
# the engine, so an interrupted job leaves no output: the next invocation runs it again and the
# engine resumes from the run's checkpoint.pt (not an output, so Snakemake never deletes it).
# params hold exactly the settings spelled in the run's path: they never change for a path, so
# Snakemake's params trigger cannot discard a finished run. Each process of a run uses one torch
# thread (`threads` counts the processes); GPUs are claimed by the job itself (sampa/gpus.py).


rule train_run:
    output:
        metrics=f"{RUNS_ROOT}/{{run}}/metrics.json",
    log:
        "logs/runs/{run}.log",
    params:
        settings=get_run_settings,
        out=lambda wildcards: f"{RUNS_ROOT}/{wildcards.run}",
    threads: get_run_threads
    resources:
        gpu=get_run_gpus,
    message:
        "train {wildcards.run} ({resources.gpu} GPU)"
    shell:
        "python -m sampa train --settings {params.settings:q} --out {params.out:q} "
        "--gpus {resources.gpu} --threads 1 >> {log:q} 2>&1"
