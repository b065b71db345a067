# The tidy table of all runs of this config (results/<name>/runs.csv): one row per run. Tables and
# figures read their own runs' directories instead (in the same process, no job of their own), so
# `snakemake results/<name>/tables/table1.md` trains Table 1's runs and nothing else.


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
        "$SAMPA_PYTHON -m sampa aggregate --runs-root {params.runs_root:q} --out {output.runs:q} "
        "{input:q} > {log:q} 2>&1"

