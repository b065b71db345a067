# One training job per run directory. The job (`python -m sampa.jobs train`) runs the engine in a child
# process and always writes the run's outcome.json: complete or diverged (the engine wrote metrics.json,
# last and atomically) or failed / needs data (no metrics.json; the record is forgotten when the
# workflow is planned again, so the run is retried and resumes from its checkpoint.pt). A failed run
# therefore never blocks the tables, which say which cells' runs failed. Only an interrupted job fails
# (so that Snakemake retries it), except on its last attempt, where the interruption is recorded too.
# params hold exactly the settings spelled in the run's path: they never change for a path, so
# Snakemake's params trigger cannot discard a finished run. Each process of a run uses one torch
# thread (`threads` counts the processes); GPUs are claimed by the job itself (sampa/gpus.py).
# A run wider than one cluster node (config gpus_per_node, set by profiles/slurm) is an MPI-style SLURM
# job: resources nodes/tasks/mpi, and `--launcher` starts one rank per task with srun (sampa.jobs.Placement).
# Per-run resources are precomputed when the workflow is planned (common.smk `per_run`): a constant where
# every run has the same value, so Snakemake need not call a function per job and resource
# (runtime and last_attempt depend on the attempt: functions).


rule train_run:
    input:
        data=get_run_data,
    output:
        outcome=f"{RUNS_ROOT}/{{run}}/{jobs.OUTCOME}",
    log:
        "logs/runs/{run}.log",
    params:
        settings=get_run_settings,
        out=lambda wildcards: f"{RUNS_ROOT}/{wildcards.run}",  # a function: --lint refuses a hardcoded prefix
        data=lambda wildcards, input: [f"--data={path}" for path in input.data],
    threads: RUN_THREADS
    resources:
        gpu=RUN_GPUS,
        machine=RUN_MACHINE_SHARE,
        runtime=get_run_runtime,
        slurm_extra=RUN_SLURM_EXTRA,
        nodes=RUN_PLACEMENT["nodes"],
        tasks=RUN_PLACEMENT["tasks"],
        tasks_per_gpu=RUN_PLACEMENT["tasks_per_gpu"],
        mpi=RUN_PLACEMENT["mpi"],
        cpus_per_task=RUN_PLACEMENT["cpus_per_task"],
        launcher=RUN_LAUNCHER,
        last_attempt=get_run_last_attempt,
    message:
        "train {wildcards.run} ({resources.gpu} GPU)"
    conda:
        ENV
    shell:
        "$SAMPA_PYTHON -m sampa.jobs train --out {params.out:q} {params.data:q} "
        "--last-attempt {resources.last_attempt} --launcher={resources.launcher:q} -- "
        "--settings {params.settings:q} --gpus {resources.gpu} --threads 1 >> {log:q} 2>&1"


# Each dataset is verified (extracted from its archive, downloaded where allowed) once, under a lock,
# before its runs; an unavailable dataset is recorded and its runs say "needs data".
rule prepare_data:
    output:
        record=f"{DATA_RECORDS}/{{dataset}}.json",
    log:
        "logs/data/{dataset}.log",
    message:
        "prepare dataset {wildcards.dataset}"
    conda:
        ENV
    shell:
        "$SAMPA_PYTHON -m sampa.jobs prepare-data {wildcards.dataset:q} --record {output.record:q} > {log:q} 2>&1"
