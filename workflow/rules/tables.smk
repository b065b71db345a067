# Paper tables: Markdown + LaTeX (booktabs) + CSV, from the experiment's own run directories. Presentation
# only: a change to the table code or to one experiment's spec re-makes tables, never trains. Runs whose data,
# weights or extra are missing here are not planned: their cells say "— [a]" and what [a] needs (spec `needs`);
# with no run left the table says "not run: needs ..." (spec `not_run`).


rule make_table:
    input:
        runs=get_table_runs,
        code=TABLE_CODE,
    output:
        md=report(
            f"{RESULTS}/tables/{{table}}.md",
            caption="../report/table.rst",
            category="Tables",
            subcategory="{table}",
            labels={"table": "{table}", "format": "Markdown"},
        ),
        tex=f"{RESULTS}/tables/{{table}}.tex",
        csv=report(
            f"{RESULTS}/tables/{{table}}.csv",
            caption="../report/table.rst",
            category="Tables",
            subcategory="{table}",
            labels={"table": "{table}", "format": "CSV"},
        ),
    log:
        f"{LOGS}/tables/{{table}}.log",
    params:
        spec=get_spec,
        runs_root=RUNS_ROOT,
    message:
        "table {wildcards.table}"
    conda:
        ENV
    shell:
        "$SAMPA_PYTHON -m sampa table --spec {params.spec:q} --runs-root {params.runs_root:q} "
        "--md {output.md:q} --tex {output.tex:q} --csv {output.csv:q} {input.runs:q} > {log:q} 2>&1"


# The reproduction scorecard: each claim of the paper with our evidence and a verdict.
rule make_scorecard:
    input:
        runs=rules.aggregate_runs.output.runs,
        toy=get_toy_summary,
        logs=get_scorecard_logs,
        code=SCORECARD_CODE,
    output:
        md=report(
            f"{RESULTS}/tables/reproduction.md",
            caption="../report/scorecard.rst",
            category="Scorecard",
            labels={"file": "reproduction.md"},
        ),
        tex=f"{RESULTS}/tables/reproduction.tex",
    log:
        f"{LOGS}/tables/reproduction.log",
    params:
        specs=get_specs,
        toy=lambda wildcards, input: ["--toy", input.toy] if input.toy else [],
        runs_root=RUNS_ROOT,
    message:
        f"reproduction scorecard of config {NAME}"
    conda:
        ENV
    shell:
        "$SAMPA_PYTHON -m sampa scorecard --specs {params.specs:q} --runs {input.runs:q} {params.toy:q} "
        "--runs-root {params.runs_root:q} --md {output.md:q} --tex {output.tex:q} > {log:q} 2>&1"
