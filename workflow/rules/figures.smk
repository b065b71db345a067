# Paper figures: PDF + PNG + the plotted data (CSV). The figure style (sampa/report/style.py) is an
# input: changing it re-makes the figures only.


rule run_toy:
    output:
        trajectories=f"{RESULTS}/toy/{{figure}}/trajectories.csv",
        summary=f"{RESULTS}/toy/{{figure}}/summary.csv",
    log:
        f"{LOGS}/toy/{{figure}}.log",
    params:
        toy=get_toy_settings,
    message:
        "toy problem f(x)=||x||^2 for {wildcards.figure}"
    conda:
        ENV
    shell:
        "$SAMPA_PYTHON -m sampa toy --out {output.trajectories:q} --summary {output.summary:q} "
        "{params.toy:q} > {log:q} 2>&1"


rule make_figure:
    input:
        data=get_figure_data,
        runs=get_figure_runs,
        code=FIGURE_CODE,
    output:
        pdf=report(
            f"{FIGURES}/{{figure}}.pdf",
            caption="../report/figure.rst",
            category="Figures",
            subcategory="{figure}",
            labels={"figure": "{figure}", "format": "PDF"},
        ),
        png=report(
            f"{FIGURES}/{{figure}}.png",
            caption="../report/figure.rst",
            category="Figures",
            subcategory="{figure}",
            labels={"figure": "{figure}", "format": "PNG"},
        ),
        csv=f"{FIGURES}/{{figure}}.csv",
    log:
        f"{LOGS}/figures/{{figure}}.log",
    params:
        spec=get_spec,
        data=lambda wildcards, input: ["--data", input.data] if input.data else [],
        runs_root=RUNS_ROOT,
    message:
        "figure {wildcards.figure}"
    conda:
        ENV
    shell:
        "$SAMPA_PYTHON -m sampa figure --spec {params.spec:q} {params.data:q} "
        "--runs-root {params.runs_root:q} --pdf {output.pdf:q} --png {output.png:q} "
        "--csv {output.csv:q} {input.runs:q} > {log:q} 2>&1"
