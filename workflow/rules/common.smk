# Config loading and validation, the plan (every run of every experiment), and input functions.
# No method or metric logic here: planning is sampa.experiments, the work is `python -m sampa ...`.

import json
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod
from snakemake.utils import min_version, validate

min_version("9.0")

REPO = Path(workflow.basedir)
# Jobs run `python -m sampa ...` from the working directory (which --directory may move): make
# them, and this Snakefile, use this checkout's package.
sys.path.insert(0, str(REPO))
os.environ.update(PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))

from sampa import experiments, jobs  # noqa: E402
from sampa.gpus import available as available_gpus  # noqa: E402

DEFAULT_CONFIG = REPO / "configs" / "smoke.yaml"


def fail(message):
    """Stop before any job starts, with one line."""
    sys.exit(f"sampa workflow: config error: {message}")


if not config:  # no --configfile: the offline CPU smoke profile
    config.update(experiments.load_config(DEFAULT_CONFIG))

config.update(experiments.normalize(config))


def check_config(config):
    """The config's structure (schema; fills in its defaults), checked when the cached plan is stale."""
    try:
        validate(config, schema=str(experiments.SCHEMA_PATH))
    except WorkflowError:
        fail(experiments.schema_error(config) or "the config does not match sampa/schemas/config.schema.yaml")
    return config


try:
    PLAN = experiments.cached_plan(config, f".snakemake/sampa/plan-{config.get('name')}.json", check_config)
except experiments.PlanError as err:
    fail(err)

NAME = PLAN.name
RUNS_ROOT = "results/runs"
RESULTS = f"results/{NAME}"
FIGURES = f"figures/{NAME}"
LOGS = f"logs/{NAME}"
DATA_RECORDS = "results/data"
RUNS = PLAN.unique_runs()
TABLES = PLAN.of_kind("table")
FIGURE_IDS = PLAN.of_kind("figure")
# code dependencies, derived: what each command's module imports (the command-line glue itself only)
COMMANDS = [str(REPO / "sampa" / "report" / "commands.py")]
TABLE_CODE = [*jobs.module_files("sampa.report.tables"), *COMMANDS]
SCORECARD_CODE = [*jobs.module_files("sampa.report.scorecard", "sampa.report.scorecard_text"), *COMMANDS]
FIGURE_CODE = [*jobs.module_files("sampa.report.figures"), *COMMANDS]
# jobs run with the interpreter that runs Snakemake (or the config's `python`), not the first on PATH;
# with `--sdm conda` the python of the rule's environment (workflow/envs/sampa.yaml)
ENV = "../envs/sampa.yaml"
if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    os.environ.update(SAMPA_PYTHON="python")
else:
    os.environ.update(SAMPA_PYTHON=shlex.quote(config.get("python") or sys.executable))
TIMING = PLAN.timing_runs() if config.get("protect_timing", False) else set()


def on_dag_settings(workflow, adjust):
    """Apply ``adjust`` to the workflow's DAG settings (targets, target jobs, forced runs) now and when
    Snakemake assigns them: it hands the parsed command line to the workflow after this file is read.
    Snakemake internals (the workflow's class gains a property): tests/test_slurm.py and
    tests/test_workflow.py fail fast if an upgrade breaks it."""

    def assign(self, settings):
        self.__dict__["dag_settings"] = adjust(settings)

    cls = type(workflow)
    settings = property(lambda self: self.__dict__.get("dag_settings"), assign)
    workflow.__class__ = type(cls.__name__, (cls,), {"dag_settings": settings})
    adjust(workflow.dag_settings)


def rejoin_split_runs(workflow):
    """On a cluster node, give the training job its whole run path back: Snakemake splits the path it
    sends with `--target-jobs` at every comma (sampa.jobs.rejoin_run_wildcard; snakemake issue #2366),
    so every run with a comma in its path failed on every attempt. Snakemake hands the parsed targets
    to the workflow after this file is read: the repair happens when they are assigned."""

    def repaired(settings):
        if settings is not None and settings.target_jobs:
            settings.target_jobs = [
                type(spec)(spec.rulename, jobs.rejoin_run_wildcard(spec.wildcards_dict))
                if spec.rulename == "train_run"
                else spec
                for spec in settings.target_jobs
            ]
        return settings

    on_dag_settings(workflow, repaired)


def target_runs(target):
    """The runs whose records a table, figure, runs-table or scorecard target reads ([] for others)."""
    path = os.path.normpath(target)
    if path == f"{RESULTS}/runs.csv" or path.startswith(f"{RESULTS}/tables/reproduction."):
        return list(RUNS)
    experiment = Path(path).stem
    if path.startswith((f"{RESULTS}/tables/", f"{FIGURES}/")) and experiment in PLAN.runs:
        return [run.path for run in PLAN.runs[experiment]]
    return []


def check_targets(workflow):
    """In the main process: a table or figure target this config does not make (a typo, another
    config's path) stops the invocation with one line naming the valid ones, not Snakemake's "No rule
    to produce". A target with a run that has no record (a failure forgotten above, a deleted run
    directory) is made again, so the run is trained: Snakemake does not recreate a missing input of
    an output that is up to date. The targets reach the workflow after this file is read: checked
    when assigned."""

    def checked(settings):
        targets = list(getattr(settings, "targets", None) or ())
        for target in targets:
            error = jobs.target_error(target, NAME, final_outputs())
            if error:
                sys.exit(f"sampa workflow: {error}")
        missing = [t for t in targets if not all(map(os.path.exists, run_metrics(target_runs(t))))]
        if missing:
            settings.forcerun = frozenset(settings.forcerun) | frozenset(missing)
        return settings

    on_dag_settings(workflow, checked)


# a failed run or an unavailable dataset is a record, not a result: forget it, so it is retried. Only
# in the process that Snakemake was started as: a job on a cluster node reads this file too, and would
# delete the records of runs that failed earlier in the same invocation, which the tables wait for
if workflow.remote_exec or workflow.subprocess_exec:
    rejoin_split_runs(workflow)
else:
    check_targets(workflow)
    jobs.forget_failures(
        [Path(RUNS_ROOT, path) for path in RUNS],
        [Path(DATA_RECORDS, f"{dataset}.json") for dataset in PLAN.prepared_datasets()],
    )

# GPUs: `--resources gpu=N` bounds concurrent GPU jobs; without it, use the GPUs of this machine, or
# those CUDA_VISIBLE_DEVICES names (a workflow profile is static YAML and cannot detect them). Which GPU a job gets is decided by
# the job itself (lock files, see sampa/gpus.py).
if "gpu" not in workflow.global_resources:
    _detected = len(available_gpus())
    if _detected:
        workflow.register_resource("gpu", _detected)
# timing protection: a training job takes one `machine` share, a run whose numbers enter a time or
# memory table takes all of them, so it never runs beside another training job (a cluster profile
# sets a larger pool and asks the scheduler for exclusive nodes instead)
MACHINE_SHARES = 1000
if "machine" not in workflow.global_resources:
    workflow.register_resource("machine", MACHINE_SHARES)
# cluster placement (profiles/slurm sets gpus_per_node and cpus_per_rank): a run that needs more GPUs
# than one node has spans several nodes, one srun task per rank (sampa.jobs.placement); unset: every
# run is one task on one node, its own launcher starts the ranks
PLACEMENTS = {}
for _path, _run in RUNS.items():
    try:
        PLACEMENTS[_path] = jobs.placement(
            int(_run.settings.get("devices", 1)),
            PLAN.use_gpus,
            config.get("gpus_per_node"),
            config.get("cpus_per_rank"),
        )
    except jobs.JobError as err:
        fail(f"run {_path}: {err}")
if PLAN.use_gpus and "gpu" in workflow.global_resources:
    try:
        _gpus = workflow.global_resources["gpu"]
        experiments.check_devices(PLAN, int(getattr(_gpus, "value", _gpus)))
    except experiments.PlanError as err:
        fail(err)


def _alternatives(names):
    """A wildcard constraint matching exactly these names."""
    return "|".join(map(re.escape, names)) if names else "(?!)"


wildcard_constraints:
    table=_alternatives(TABLES),
    figure=_alternatives(FIGURE_IDS),
    dataset=_alternatives(PLAN.prepared_datasets()),


# ----------------------------------------------------------------------------------------------
# Input functions and params


def get_run(wildcards):
    try:
        return RUNS[wildcards.run]
    except KeyError:
        raise WorkflowError(f"{wildcards.run!r} is not a run of config {NAME!r}") from None


def get_run_settings(wildcards):
    return json.dumps(get_run(wildcards).settings, sort_keys=True)


def per_run(value_of):
    """A train_run resource (or thread count) from each run's value: a constant where every run has the
    same, else a lookup by the run wildcard. Snakemake evaluates a callable resource for every job
    (inspecting its signature each time), which dominated a paper dry run; a constant it just reads."""
    values = {path: value_of(run) for path, run in RUNS.items()}
    distinct = set(values.values())
    if len(distinct) == 1:
        return distinct.pop()
    return lambda wildcards: values[get_run(wildcards).path]


# one CPU thread per process: a two-device run is two processes (the data live on the device)
RUN_THREADS = per_run(lambda run: int(run.settings.get("devices", 1)))
RUN_GPUS = per_run(lambda run: run.gpus(PLAN.use_gpus))
# timing protection: the whole machine (all shares) and, on a cluster, an exclusive node
RUN_MACHINE_SHARE = per_run(lambda run: MACHINE_SHARES if run.path in TIMING else 1)
RUN_SLURM_EXTRA = per_run(lambda run: "--exclusive" if run.path in TIMING else "")
# one SLURM resource of the run's placement each (None: not set), and the command prefix that starts
# the run's ranks ('' on one node: the run's own launcher does)
RUN_PLACEMENT = {
    name: per_run(lambda run, name=name: PLACEMENTS[run.path].resources()[name])
    for name in ("nodes", "tasks", "tasks_per_gpu", "mpi", "cpus_per_task")
}
RUN_LAUNCHER = per_run(lambda run: PLACEMENTS[run.path].launcher())


def get_run_runtime(wildcards, attempt):
    """Minutes a run may take on a cluster: epochs x a per-model estimate (config `runtime`), times the
    attempt (a retried job resumes its checkpoint with a longer time limit)."""
    return PLAN.minutes[get_run(wildcards).path] * attempt


def get_run_last_attempt(wildcards, attempt):
    """1 on the job's last attempt (no retries left): an interruption is then a failed run, not a
    failed job, so it never blocks the tables (sampa/jobs.py)."""
    return int(attempt > workflow_retries())


def workflow_retries():
    """The retries of the main Snakemake process. A job it submits to a cluster runs Snakemake again on
    the node with `--retries 0` (snakemake/spawn_jobs.py), where every attempt would look like the last
    (an interrupted job recorded as a failed run, not retried with a longer time limit): so the main
    process puts its count in the environment, which the jobs inherit (the SLURM plugin submits with
    --export=ALL), before it submits any."""
    retries = workflow.execution_settings.retries
    if workflow.remote_exec or workflow.subprocess_exec:
        return jobs.retries_of(os.environ, retries)
    os.environ[jobs.RETRIES_ENV] = str(retries)
    return retries


def get_run_data(wildcards):
    """The data record of the run's dataset (none for synthetic data)."""
    dataset = PLAN.data.get(get_run(wildcards).path)
    return [f"{DATA_RECORDS}/{dataset}.json"] if dataset else []


def run_metrics(paths):
    """The outcome records of runs (written whether the run finished or failed)."""
    return [f"{RUNS_ROOT}/{path}/{jobs.OUTCOME}" for path in paths]


def get_all_metrics(wildcards):
    return run_metrics(RUNS)


def experiment_metrics(experiment):
    """The outcome records of one experiment's runs: its table or figure waits for these only, so
    `snakemake results/<name>/tables/table1.md` trains Table 1's runs and nothing else."""
    return run_metrics(dict.fromkeys(run.path for run in PLAN.runs[experiment]))


def get_table_runs(wildcards):
    return experiment_metrics(wildcards.table)


def get_spec(wildcards):
    experiment = getattr(wildcards, "table", None) or getattr(wildcards, "figure", None)
    return experiments.spec_json(PLAN.specs[experiment])


def _is_toy(figure):
    return PLAN.specs[figure]["figure"]["plot"] == "toy"


def get_figure_data(wildcards):
    """The toy figure's trajectories (the other figures are drawn from their runs)."""
    return [f"{RESULTS}/toy/{wildcards.figure}/trajectories.csv"] if _is_toy(wildcards.figure) else []


def get_figure_runs(wildcards):
    """The figure's runs (per-epoch figures read their log.jsonl, complete once the run finished)."""
    return [] if _is_toy(wildcards.figure) else experiment_metrics(wildcards.figure)


def get_toy_settings(wildcards):
    toy = PLAN.specs[wildcards.figure]["figure"].get("toy", {})
    flags = []
    for key in ("steps", "lr", "decay", "rho", "seed"):
        if key in toy:
            flags += [f"--{key}", str(toy[key])]
    if "lams" in toy:
        flags += ["--lams", ",".join(experiments.canonical(v) for v in toy["lams"])]
    return flags


def get_specs(wildcards):
    """Every experiment of the config, resolved (the scorecard finds the paper's tables among them)."""
    return json.dumps(PLAN.specs, sort_keys=True, separators=(",", ":"))


def get_toy_summary(wildcards):
    """The toy summary of the Figure 1 experiment (none when the config has no toy figure)."""
    toy = [f for f in FIGURE_IDS if PLAN.specs[f]["figure"]["plot"] == "toy"]
    return [f"{RESULTS}/toy/{toy[0]}/summary.csv"] if toy else []


def get_scorecard_logs(wildcards):
    """Runs whose per-epoch logs the scorecard reads (Figure 4's; complete once the run finished)."""
    epochs = [f for f in FIGURE_IDS if PLAN.specs[f]["figure"]["plot"] == "epochs"]
    return run_metrics(dict.fromkeys(run.path for f in epochs for run in PLAN.runs[f]))


def final_outputs():
    # every run is a target itself: Snakemake does not recreate a missing intermediate file whose
    # consumers are up to date, so a deleted record would otherwise go unnoticed
    outputs = [*run_metrics(RUNS), f"{RESULTS}/runs.csv"]
    for table in TABLES:
        outputs += [f"{RESULTS}/tables/{table}.{ext}" for ext in ("md", "tex", "csv")]
    for figure in FIGURE_IDS:
        outputs += [f"{FIGURES}/{figure}.{ext}" for ext in ("pdf", "png", "csv")]
    outputs += [f"{RESULTS}/tables/reproduction.{ext}" for ext in ("md", "tex")]
    return outputs


def invoked_runs():
    """The runs whose training job is in this invocation's DAG, trained now or already (None where
    Snakemake does not say: then the summary counts every run of the config)."""
    try:
        dag_jobs = list(workflow.dag.jobs)
        return {job.wildcards_dict["run"] for job in dag_jobs if job.rule.name == "train_run"}
    except (AttributeError, KeyError, TypeError):
        return None


def print_summary():
    """The last screen of an invocation: runs finished, runs failed with their logs (the runs its
    targets needed: `snakemake results/<name>/tables/table1.md` counts Table 1's runs)."""
    invoked = invoked_runs()
    paths = list(RUNS) if invoked is None else [p for p in RUNS if p in invoked]
    text = jobs.summary(
        {p: Path(RUNS_ROOT, p) for p in paths},
        {p: f"logs/runs/{p}.log" for p in paths},
        others=len(RUNS) - len(paths),
    )
    print(text, file=sys.stderr)
