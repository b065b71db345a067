# The tidy table of all runs of this config (results/<name>/runs.csv): one row per run.

AGGREGATE = (
    "$SAMPA_PYTHON -m sampa aggregate --runs-root {params.runs_root:q} --out {output.runs:q} "
    "{input:q} > {log:q} 2>&1"
)


rule aggregate_runs:
    input:
        get_all_metrics,
    output:
        runs=report(
            f"{RESULTS}/runs.csv",
            caption="../report/runs.rst",
            category="Runs",
            labels={"file": "runs.csv"},
        ),
    log:
        f"{LOGS}/aggregate_runs.log",
    params:
        runs_root=RUNS_ROOT,
    message:
        f"aggregate the runs of config {NAME} into {{output.runs}}"
    conda:
        ENV
    shell:
        AGGREGATE


# The runs table of one experiment: its table or figure waits for its own runs only, so
# `snakemake results/<name>/tables/table1.md` trains Table 1's runs and nothing else.
rule aggregate_experiment:
    input:
        get_experiment_metrics,
    output:
        runs=f"{RESULTS}/experiments/{{experiment}}/runs.csv",
    log:
        f"{LOGS}/aggregate/{{experiment}}.log",
    params:
        runs_root=RUNS_ROOT,
    message:
        "aggregate the runs of experiment {wildcards.experiment}"
    conda:
        ENV
    shell:
        AGGREGATE
