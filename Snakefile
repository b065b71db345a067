# sampa-bench workflow: every table and figure of the SAMPa paper from one command.
#
#   snakemake --cores all --configfile configs/smoke.yaml     # offline CPU smoke profile (default)
#   snakemake --cores all --configfile configs/paper.yaml     # the paper (GPUs; see README)
#   snakemake --report report.html --configfile ...           # HTML report with every table and figure
#
# Experiments are data (configs/*.yaml, schema in sampa/schemas/); rules only call `python -m sampa`.

report: "workflow/report/workflow.rst"

include: "workflow/rules/common.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"


localrules:
    all,
    aggregate_runs,
    make_table,
    make_scorecard,
    make_figure,
    run_toy,
    prepare_data,


onsuccess:
    print_summary()


onerror:
    print_summary()


rule all:
    default_target: True
    input:
        final_outputs(),
    message:
        f"all tables and figures of config {NAME}"
