"""The Snakemake workflow: planning, config validation, caching and partial reruns, end to end.

Snakemake runs in a subprocess on a temporary directory (``--directory``), like a user would run it.
The full smoke profile (every optimizer, every table and figure) is ``slow``; a two-optimizer
miniature of it runs in the default suite and checks caching, partial reruns and resuming.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sampa import experiments as ex

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"


def snakemake(
    *args: str,
    cwd: Path,
    check: bool = True,
    timeout: int = 900,
    snakefile: Path = SNAKEFILE,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(snakefile.parent),
        "SAMPA_GPU_LOCK_DIR": str(cwd / "gpu-locks"),
        **(env or {}),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(snakefile), "--directory", str(cwd), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # Snakemake prints job stats to stdout on dry runs, stderr otherwise
        text=True,
        env=env,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-6000:]}")
    return proc


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a (dry) run: rule -> number of jobs."""
    stats = output.split("Job stats:", 1)[1].splitlines()
    counts = {}
    for line in stats[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# ----------------------------------------------------------------------------------------------
# Planning the paper


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """No data root and an empty hub cache: what Tables 3, 5 and 6 need is missing."""
    from sampa import requirements

    monkeypatch.setenv("SAMPA_DATA", str(tmp_path / "no-data"))
    monkeypatch.setattr(requirements, "_in_hub_cache", lambda name: False)
    return {"SAMPA_DATA": str(tmp_path / "no-data"), "HF_HUB_CACHE": str(tmp_path / "no-hub")}


def test_paper_config_plans_the_expected_runs_per_table(no_data):
    plan = ex.plan(ex.load_config(REPO / "configs" / "paper.yaml"))
    runs = {name: len(r) for name, r in plan.runs.items()}
    six = 6
    expected = {
        "table1": 5 * 5 * six,  # 5 models x (SGD, SAM, SAMPa-0, SAMPa-0.2, SAMPa-0.2 400 ep)
        "table2": 5 * 5 * six,
        "table3": 0,  # no ImageNet here (see test_paper_tables_3_5_6_are_planned_when_their_data_is_here)
        "table4": 7 * six,  # SAM, SAMPa-0.2 and 5 efficient variants on ResNet-56
        "table5": 0,  # no ViT-B/16 weights
        "table6": 0,  # no GLUE, no BERT-base
        "table7": 5 * 4 * six,  # 5 noise rates x (SGD, SAM, SAMPa-0, SAMPa-0.2)
        "table8": 10 * six,  # 5 variants and their +SAMPa combinations
        "table9": 3 * 3 * six,
        "table10": 3 * 3 * six,
        "table11": 3 * six,
        "table12": 7 * 3,  # 7 batch sizes, 3 timing seeds
        "table13": 2 * 3 * six,
        "table14": 7 * six,
        "vsam": 2 * 3 * 3 * 3,  # 2 datasets x 3 models x (SGD, SAM, vSAM) x 3 seeds
        "figure1": 0,  # the toy problem, not a training run
        "figure2": 7 * six,
        "figure3": 2 * 11 * six,  # 2 models x lambda in 0, 0.1, ..., 1
        "figure4": 3,
        "sam-steps": 3 * 3,  # LookSAM, AE-SAM, vSAM on ResNet-56, 3 seeds
    }
    assert runs == expected
    shared = {
        # runs planned by an earlier experiment as well (one directory, trained once)
        "table4": 2 * six,  # SAM and SAMPa-0.2 on ResNet-56 are Table 1's
        "table9": 2 * 3 * six,  # SGD and SAM of the three models are Table 1's
        "table10": 2 * 3 * six,
        "table11": 2 * six,  # SAM and SAMPa-0.2 (2 devices)
        "table13": 2 * six + 2 * six,  # SAM/SAMPa-0.2 on ResNet-56 (Table 1), at 80% noise (Table 7)
        "table14": 7 * six,  # Table 4's runs
        "figure2": 7 * six,
        "figure3": 2 * six,  # lambda = 0.2 is Table 1's SAMPa-0.2 on both models
        "vsam": 2 * 3,  # SAM on WRN-28-10 (CIFAR-10: Table 1, CIFAR-100: Table 2), 3 seeds
        "sam-steps": 2 * 3,  # LookSAM and AE-SAM are Table 4's
    }
    seen: set[str] = set()
    for name, planned in plan.runs.items():
        paths = {r.path for r in planned}
        assert len(paths & seen) == shared.get(name, 0), name
        seen |= paths
    assert len(plan.unique_runs()) == sum(expected.values()) - sum(shared.values())


def fake_paper_data(root: Path) -> None:
    """Empty files where Tables 3, 5 and 6 look for their data and weights (enough to plan, not to train)."""
    from sampa.glue_tasks import GLUE_TASKS

    for split in ("train", "val"):
        (root / "imagenet" / split / "n01440764").mkdir(parents=True)
    for task in GLUE_TASKS.values():
        folder = root / "glue" / task.tsv.folder
        folder.mkdir(parents=True)
        for name in ("train.tsv", task.tsv.dev_file):
            (folder / name).touch()
    (root / "weights" / "bert-base-uncased").mkdir(parents=True)
    (root / "weights" / "bert-base-uncased" / "config.json").write_text("{}")
    (root / "weights" / "vit-b16-imagenet21k").mkdir(parents=True)
    (root / "weights" / "vit-b16-imagenet21k" / "model.safetensors").touch()


def test_paper_tables_3_5_6_are_planned_when_their_data_is_here(tmp_path, no_data, monkeypatch):
    from sampa import extras

    if not (extras.available("vision") and extras.available("nlp")):
        pytest.skip("needs the vision and nlp extras")
    fake_paper_data(tmp_path / "data")
    monkeypatch.setenv("SAMPA_DATA", str(tmp_path / "data"))
    plan = ex.plan(ex.load_config(REPO / "configs" / "paper.yaml"))
    runs = {name: plan.runs[name] for name in ("table3", "table5", "table6")}
    assert {name: len(r) for name, r in runs.items()} == {
        "table3": 2 * 3,
        "table5": 2 * 2 * 6,
        "table6": 4 * 9 * 10,
    }
    assert not any("not_run" in plan.specs[name] for name in runs)
    glue = {(r.cell["arm"], r.cell["dataset"]): r.settings for r in runs["table6"] if r.seed == 0}
    assert (
        glue[("SAM", "CoLA")]["hparams"]["rho"] == 0.01
        and glue[("SAMPa-0.1", "RTE")]["hparams"]["rho"] == 0.005
    )
    assert glue[("SAM", "MRPC")]["epochs"] == 5 and glue[("AdamW", "SST-2")]["epochs"] == 3
    assert {r.settings["model"] for r in runs["table3"]} == {"resnet50"}
    (tmp_path / "data" / "glue" / "RTE" / "train.tsv").unlink()  # one task missing: the other eight run
    plan = ex.plan(ex.load_config(REPO / "configs" / "paper.yaml"))
    tasks = {r.cell["dataset"] for r in plan.runs["table6"]}
    assert len(plan.runs["table6"]) == 4 * 8 * 10 and len(tasks) == 8 and "RTE" not in tasks
    assert "not_run" not in plan.specs["table6"]
    glue = tmp_path / "data" / "glue"
    assert plan.specs["table6"]["needs"] == {
        "glue-rte bert-base": [f"needs GLUE RTE at {glue} (RTE/ TSVs or rte/ parquet files)"]
    }
    assert len(plan.runs["table3"]) == 6


def test_paper_dry_run_job_counts(tmp_path, no_data):
    plan = ex.plan(ex.load_config(REPO / "configs" / "paper.yaml"))
    config = str(REPO / "configs" / "paper.yaml")
    out = snakemake("-n", "--configfile", config, cwd=tmp_path, env=no_data).stdout
    counts = job_counts(out)
    assert counts["train_run"] == len(plan.unique_runs())
    assert counts["make_table"] == 15  # Tables 1-14 (3, 5 and 6 say "not run: needs ...") and vSAM
    assert counts["make_figure"] == 5 and counts["run_toy"] == 1 and counts["aggregate_runs"] == 1
    assert counts["make_scorecard"] == 1  # results/paper/tables/reproduction.{md,tex}


def test_one_table_by_target_name_trains_only_its_runs(tmp_path, no_data):
    plan = ex.plan(ex.load_config(REPO / "configs" / "paper.yaml"))
    table1 = {run.path for run in plan.runs["table1"]}
    assert 0 < len(table1) < len(plan.unique_runs())
    config = str(REPO / "configs" / "paper.yaml")
    target = "results/paper/tables/table1.md"
    counts = job_counts(snakemake("-n", target, "--configfile", config, cwd=tmp_path, env=no_data).stdout)
    assert counts["train_run"] == len(table1)
    # the table itself and its runs' data check, nothing else (no runs table, no other table)
    assert counts == {"prepare_data": 1, "train_run": len(table1), "make_table": 1, "total": len(table1) + 2}


def test_slurm_profile_plans_the_paper(tmp_path):
    pytest.importorskip(
        "snakemake_executor_plugin_slurm", reason="pip install snakemake-executor-plugin-slurm"
    )
    args = [
        "-n",
        "--profile",
        str(REPO / "profiles" / "slurm"),
        "--configfile",
        str(REPO / "configs" / "paper.yaml"),
    ]
    out = snakemake(*args, cwd=tmp_path).stdout
    assert job_counts(out)["train_run"] == len(
        ex.plan(ex.load_config(REPO / "configs" / "paper.yaml")).unique_runs()
    )


@pytest.mark.parametrize(
    ("mode", "env", "last"),
    [
        (["--retries", "2"], {}, "0"),  # the main process: attempt 1 of 3
        (["--mode", "remote", "--retries", "0", "--attempt", "2"], {"SAMPA_WORKFLOW_RETRIES": "2"}, "0"),
        (["--mode", "remote", "--retries", "0", "--attempt", "3"], {"SAMPA_WORKFLOW_RETRIES": "2"}, "1"),
    ],
)
def test_a_job_run_on_a_cluster_node_knows_the_retries_of_the_main_process(tmp_path, mode, env, last):
    """On a node, Snakemake runs the job with --retries 0 and the attempt number; the main process's
    retry count comes through the environment, so only the real last attempt records an interruption."""
    config = str(REPO / "configs" / "smoke.yaml")
    run = ex.plan(ex.load_config(config)).runs["table1"][0].path
    target = f"results/runs/{run}/outcome.json"
    out = snakemake("-n", "-p", target, "--configfile", config, *mode, cwd=tmp_path, env=env).stdout
    assert re.findall(r"--last-attempt (\d)", out) == [last]


TABLE3_8GPU = REPO / "configs" / "multi-gpu" / "table3-8gpu.yaml"


def wide_config() -> dict:
    """SAMPa on 8 GPUs (two groups of 4) beside SAM on 2."""
    arms = [
        {"label": "SAMPa", "optimizer": "sampa", "run": {"devices": 8}},
        {"label": "SAM", "optimizer": "sam", "run": {"devices": 2}},
    ]
    return {
        "name": "wide",
        "use_gpus": True,
        "seeds": [0],
        "run": {"dataset": "synthetic", "model": "tinycnn", "epochs": 1},
        "experiments": {
            "t": {
                "kind": "table",
                "title": "wide",
                "arms": arms,
                "table": {"rows": [], "columns": ["arm"], "metrics": ["test_acc"]},
            }
        },
    }


def launchers(output: str) -> dict[str, str]:
    """Devices -> the --launcher of the training commands a dry run (-p) prints."""
    found = re.findall(r"sampa\.jobs train .*?--launcher=(.*?) -- --settings '.*?\"devices\": (\d+)", output)
    return {devices: launcher for launcher, devices in found}


def test_slurm_profile_spreads_a_run_wider_than_a_node_over_nodes(tmp_path):
    """profiles/slurm (gpus_per_node=4): the 8-GPU run is one srun task per rank on two nodes, the 2-GPU
    run one task (its own launcher); with gpus_per_node=8 both are one task; a bad value is one line."""
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="needs snakemake-executor-plugin-slurm")
    config = str(write_config(tmp_path / "wide.yaml", wide_config()))
    profile = ["--profile", str(REPO / "profiles" / "slurm"), "--configfile", config]
    found = launchers(snakemake("-n", "-p", *profile, cwd=tmp_path).stdout)
    srun = "srun --nodes=2 --ntasks=8 --ntasks-per-node=4 --gpus-per-task=1 --cpus-per-task=4"
    srun += " --kill-on-bad-exit=1"
    assert found == {"8": f"'{srun}'", "2": ""}
    one_node = snakemake("-n", "-p", *profile, "--config", "gpus_per_node=8", cwd=tmp_path).stdout
    assert launchers(one_node) == {"8": "", "2": ""}
    table3 = ["--profile", str(REPO / "profiles" / "slurm"), "--configfile", str(TABLE3_8GPU)]
    for split in ("train", "val"):  # planned only where ImageNet is
        (tmp_path / "data" / "imagenet" / split).mkdir(parents=True)
    imagenet = {"SAMPA_DATA": str(tmp_path / "data")}
    out = snakemake("-n", "-p", *table3, cwd=tmp_path, env=imagenet).stdout  # README's Table 3, 2 x 4
    assert launchers(out) == {"8": f"'{srun}'"} and job_counts(out)["train_run"] == 6
    bad = snakemake("-n", *profile, "--config", "gpus_per_node=none", cwd=tmp_path, check=False)
    assert bad.returncode != 0
    last = bad.stdout.strip().splitlines()[-1]
    assert last == "sampa workflow: config error: gpus_per_node: 'none' is not of type 'integer'", last


# ----------------------------------------------------------------------------------------------
# The presentation jobs read run files: no torch


#: runs ``python -m sampa ARGS`` and prints, at exit, whether torch was imported
TORCH_PROBE = (
    "import atexit, runpy, sys; "
    "atexit.register(lambda: print('torch imported:', 'torch' in sys.modules)); "
    "runpy.run_module('sampa', run_name='__main__', alter_sys=True)"
)


def test_table_figure_aggregate_and_scorecard_jobs_never_import_torch(tmp_path):
    """Given the specs the workflow planned, the presentation commands expand their runs from the
    spec's recorded method defaults instead of the methods themselves (importing torch costs a job
    about 2 CPU-s), and name models from sampa.names."""
    from test_report import CONFIG, write_run  # tests/ is on sys.path under pytest

    plan = ex.plan(copy.deepcopy(CONFIG))
    root = tmp_path / "runs"
    for i, run in enumerate(plan.runs["t1"]):
        write_run(root, run, None if i == 0 else 0.9 + i / 1000)  # one unfinished run
    records = [str(root / path / "outcome.json") for path in dict.fromkeys(r.path for r in plan.runs["t1"])]
    bars = {**plan.specs["t1"], "kind": "figure", "figure": {"plot": "bars", "metrics": ["test_acc"]}}
    out = {name: tmp_path / name for name in ("t.md", "t.tex", "t.csv", "f.pdf", "f.png", "f.csv", "r.csv")}
    out["card.md"] = tmp_path / "card.md"
    table = ["--md", str(out["t.md"]), "--tex", str(out["t.tex"]), "--csv", str(out["t.csv"])]
    figure = ["--pdf", str(out["f.pdf"]), "--png", str(out["f.png"]), "--csv", str(out["f.csv"])]
    card = ["--runs", str(out["r.csv"]), "--md", str(out["card.md"])]
    commands = [
        ["aggregate", "--runs-root", str(root), "--out", str(out["r.csv"]), *records],
        ["table", "--spec", ex.spec_json(plan.specs["t1"]), "--runs-root", str(root), *records, *table],
        ["figure", "--spec", ex.spec_json(bars), "--runs-root", str(root), *records, *figure],
        ["scorecard", "--specs", ex.spec_json(plan.specs), *card],
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for command in commands:
        probe = [sys.executable, "-c", TORCH_PROBE, *command]
        proc = subprocess.run(probe, capture_output=True, text=True, env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.strip().endswith("torch imported: False"), (command[0], proc.stdout[-500:])
    assert all(path.stat().st_size > 0 for path in out.values())
    assert "| ResNet-56 " in out["t.md"].read_text()  # axis_label named the model without sampa.models


# ----------------------------------------------------------------------------------------------
# Config validation before any job starts


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(seeds=[]), r"seeds: \[\] should be non-empty"),
        (lambda c: c["arms"]["sam"]["hparams"].update(rho=-0.1), r"rho must be in \[0, inf\) \(got -0.1\)"),
        (lambda c: c["run"].update(betas=[0.8, 0.99]), r"betas \[0.8, 0.99\] is not read by base_optimizer"),
    ],
)
def test_bad_config_stops_before_any_job_with_one_line(tmp_path, change, message):
    """The wiring: a schema violation, a value sampa.config.validate rejects and one the run would ignore
    (every other bad value is checked in test_experiments.py, in-process)."""
    config = ex.load_config(REPO / "configs" / "smoke.yaml")
    change(config)
    proc = snakemake(
        "-n", "--configfile", str(write_config(tmp_path / "bad.yaml", config)), cwd=tmp_path, check=False
    )
    assert proc.returncode != 0
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("sampa workflow: config error: "), proc.stdout[-2000:]
    assert re.search(message, last), last
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("results/smoke/tables/table99.md", r"unknown target .*'; config 'smoke' makes .* table14, "),
        ("results/paper/tables/table1.md", "is an output of config 'paper', but the config is 'smoke'"),
    ],
)
def test_a_target_the_config_does_not_make_stops_with_one_line(tmp_path, target, message):
    """Not Snakemake's "No rule to produce": the valid targets (or the config they belong to)."""
    config = str(REPO / "configs" / "smoke.yaml")
    proc = snakemake("-n", target, "--configfile", config, cwd=tmp_path, check=False)
    assert proc.returncode != 0
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("sampa workflow: ") and re.search(message, last), proc.stdout[-2000:]
    assert "MissingRuleException" not in proc.stdout


def test_a_table_target_trains_its_runs_that_have_no_record_even_when_the_table_is_newer(tmp_path):
    """A forgotten failure or a deleted run directory: Snakemake alone would not recreate the missing
    records of a table that is up to date ("Nothing to be done"), so the failed runs would never retry."""
    config = str(REPO / "configs" / "smoke.yaml")
    runs = ex.plan(ex.load_config(REPO / "configs" / "smoke.yaml")).runs["table12"]
    tables = tmp_path / "results" / "smoke" / "tables"
    tables.mkdir(parents=True)
    for ext in ("md", "tex", "csv"):
        (tables / f"table12.{ext}").write_text("made before its runs were deleted\n")
    out = snakemake("-n", "results/smoke/tables/table12.md", "--configfile", config, cwd=tmp_path).stdout
    assert job_counts(out) == {"train_run": len(runs), "make_table": 1, "total": len(runs) + 1}


def test_too_few_gpus_stop_the_plan_with_one_line(tmp_path):
    config = ex.load_config(REPO / "configs" / "smoke.yaml") | {"use_gpus": True}  # Table 11: 2 devices
    path = str(write_config(tmp_path / "gpus.yaml", config))
    proc = snakemake("-n", "--resources", "gpu=1", "--configfile", path, cwd=tmp_path, check=False)
    assert proc.returncode != 0
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(
        r"sampa workflow: config error: run synthetic/tinycnn/\S+ needs 2 GPUs but the workflow may use 1 "
        r"\(--resources gpu=1\); give more GPUs or disable its experiment",
        last,
    ), last
    assert (
        "needs 2 GPUs"
        not in snakemake("-n", "--resources", "gpu=2", "--configfile", path, cwd=tmp_path).stdout
    )


def test_smoke_dry_run_plans_the_toy_table_3_on_the_generated_image_folder(tmp_path, no_data):
    smoke = REPO / "configs" / "smoke.yaml"
    plan = ex.plan(ex.load_config(smoke))
    runs = plan.runs["table3"]
    assert {r.cell["arm"] for r in runs} == {"SAM", "SAMPa-0.2"} and "not_run" not in plan.specs["table3"]
    assert {(r.settings["dataset"], r.settings["model"]) for r in runs} == {("imagefolder-toy", "tinycnn")}
    assert "toy ImageFolder (generated)" in plan.specs["table3"]["caption"]
    assert plan.prepared_datasets() == ["imagefolder-toy"]  # the smoke's only data step: it writes the JPEGs
    out = snakemake("-n", "--configfile", str(smoke), cwd=tmp_path, env=no_data).stdout
    assert job_counts(out)["prepare_data"] == 1 and "results/data/imagefolder-toy.json" in out
    assert all(f"results/runs/{run.path}/outcome.json" in out for run in runs)
    assert "results/smoke/tables/table3.md" in out
    assert "imagenet" not in out  # nothing reads or makes <data root>/imagenet


def test_dry_run_trains_the_glue_tasks_whose_files_are_here(tmp_path):
    from sampa import extras

    if not extras.available("nlp"):
        pytest.skip("GLUE runs need the nlp extra")
    data = tmp_path / "data"
    for name in ("train.tsv", "dev.tsv"):  # RTE is here, WNLI is not
        (data / "glue" / "RTE").mkdir(parents=True, exist_ok=True)
        (data / "glue" / "RTE" / name).touch()
    (data / "weights" / "bert-base-uncased").mkdir(parents=True)
    (data / "weights" / "bert-base-uncased" / "config.json").write_text("{}")
    config = mini_config() | {"name": "glue"}
    config["experiments"] = {
        "glue": {
            "kind": "table",
            "title": "GLUE",
            "run": {"model": "bert-tiny", "base_optimizer": "adamw", "lr": 2.0e-5, "batch_size": 32},
            "arms": [{"label": "SAM", "optimizer": "sam"}, {"label": "AdamW", "optimizer": "sgd"}],
            "grid": {"dataset": ["glue-rte", "glue-wnli"]},
            "table": {"rows": ["arm"], "columns": ["dataset", "metric"], "metrics": ["glue_acc"]},
        }
    }
    path = str(write_config(tmp_path / "glue.yaml", config))
    out = snakemake("-n", "--configfile", path, cwd=tmp_path, env={"SAMPA_DATA": str(data)}).stdout
    counts = job_counts(out)
    assert counts["train_run"] == 2 * len(config["seeds"]) and counts["make_table"] == 1
    assert "glue-rte/bert-tiny" in out and "glue-wnli" not in out


# ----------------------------------------------------------------------------------------------
# End to end: a miniature of the smoke profile


#: a quarter of the smoke profile's data: what the miniature's tests assert (jobs run, cached, resumed,
#: failed, tables and figures written) does not depend on how much the runs learn
SMALL_DATA = {"synthetic_train_size": 320, "synthetic_test_size": 50}


def mini_config(*, small: bool = False) -> dict:
    """The smoke profile's settings, with ``small`` on less data (test_slurm's time limits need the full
    size, its runs must last)."""
    smoke = ex.load_config(REPO / "configs" / "smoke.yaml")
    config = {k: copy.deepcopy(smoke[k]) for k in ("note", "use_gpus", "seeds", "run")}
    if small:
        config["run"] |= SMALL_DATA
    config["name"] = "mini"
    config["experiments"] = {
        "table": {
            "kind": "table",
            "title": "mini",
            "arms": [{"label": "SAM", "optimizer": "sam"}],
            "table": {"rows": [], "columns": ["arm"], "metrics": ["test_acc"]},
        },
        "bars": {
            "kind": "figure",
            "title": "mini",
            "arms": [{"label": "SAM", "optimizer": "sam"}],
            "figure": {"plot": "bars", "metrics": ["time_per_epoch_s"]},
        },
    }
    return config


def copy_workflow(dest: Path) -> Path:
    """This checkout's workflow and package, so a test can edit the figure style."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in ("sampa", "workflow", "profiles", "configs"):
        shutil.copytree(REPO / part, dest / part, ignore=ignore)
    shutil.copy(SNAKEFILE, dest / "Snakefile")
    return dest / "Snakefile"


def path_without_torch(tmp_path: Path) -> dict[str, str]:
    """A PATH whose first `python` cannot run the jobs: they must use the interpreter running Snakemake."""
    fake = tmp_path / "fake-bin"
    fake.mkdir()
    for name in ("python", "python3"):
        (fake / name).write_text("#!/bin/sh\necho 'not the workflow interpreter' >&2\nexit 97\n")
        (fake / name).chmod(0o755)
    return {"PATH": f"{fake}{os.pathsep}{os.environ.get('PATH', '')}"}


def test_mini_workflow_caches_reruns_one_job_and_resumes(tmp_path):
    from sampa.config import config_from_dict
    from sampa.train import train

    path = path_without_torch(tmp_path)
    snakefile = copy_workflow(tmp_path / "code")
    work = tmp_path / "work"
    work.mkdir()
    config = str(write_config(tmp_path / "mini.yaml", mini_config(small=True)))
    plan = ex.plan(ex.load_config(config))
    runs = sorted(plan.unique_runs())
    assert len(runs) == 2
    # an interrupted run: one of its two epochs done, its checkpoint left behind
    resumed = plan.unique_runs()[runs[0]]
    out = work / "results/runs" / resumed.path
    train(config_from_dict(copy.deepcopy(resumed.settings)), out, stop_after=1, log_progress=False)
    assert (out / "checkpoint.pt").exists() and not (out / "metrics.json").exists()

    first = snakemake("--cores", "2", "--configfile", config, cwd=work, snakefile=snakefile, env=path).stdout
    assert job_counts(first)["train_run"] == 2
    assert "sampa workflow: 2 of 2 runs finished" in first
    metrics = pd.read_csv(work / "results/mini/runs.csv")
    assert (metrics["status"] == "complete").all() and len(metrics) == 2
    assert metrics.set_index("run").loc[resumed.path, "provenance.resumes"] == 1  # resumed, not restarted
    table = (work / "results/mini/tables/table.md").read_text()
    assert table.startswith("> **SMOKE PROFILE: synthetic data")
    assert "| SAM " in table and " ± " in table
    for ext in ("pdf", "png", "csv"):
        assert (work / f"figures/mini/bars.{ext}").stat().st_size > 0
    card = (work / "results/mini/tables/reproduction.md").read_text()
    assert card.startswith("> **SMOKE PROFILE") and "# Reproduction scorecard" in card
    assert (
        "11 not run" in card and "experiment not in this config: Table 1" in card
    )  # no paper experiment here
    tables_before = {p.name: p.read_bytes() for p in (work / "results/mini/tables").iterdir()}

    # one run's metrics deleted: only that run is trained again, then the presentation jobs
    (work / "results/runs" / runs[1] / "metrics.json").unlink()
    second = snakemake("--cores", "2", "--configfile", config, cwd=work, snakefile=snakefile, env=path).stdout
    assert job_counts(second) == {
        "train_run": 1,
        "aggregate_runs": 1,
        "make_table": 1,
        "make_figure": 1,
        "make_scorecard": 1,
        "all": 1,
        "total": 6,
    }
    # training is deterministic: the retrained run gives byte-identical tables
    assert {p.name: p.read_bytes() for p in (work / "results/mini/tables").iterdir()} == tables_before
    # nothing changed: nothing to do
    assert (
        "Nothing to be done" in snakemake("-n", "--configfile", config, cwd=work, snakefile=snakefile).stdout
    )

    # a figure-style change re-makes the figures only
    style = tmp_path / "code/sampa/report/style.py"
    style.write_text(style.read_text().replace("PNG_DPI = 200", "PNG_DPI = 150"))
    counts = job_counts(snakemake("-n", "--configfile", config, cwd=work, snakefile=snakefile).stdout)
    assert counts == {"make_figure": 1, "all": 1, "total": 2}

    # a third seed: only its run is new (then the presentation jobs)
    more = mini_config(small=True) | {"seeds": [0, 1, 2]}
    config = str(write_config(tmp_path / "more.yaml", more))
    counts = job_counts(snakemake("-n", "--configfile", config, cwd=work, snakefile=snakefile).stdout)
    assert counts["train_run"] == 1 and counts["make_table"] == 1


def test_the_summary_counts_the_runs_its_targets_needed(tmp_path):
    """`snakemake <one table>` ends with the count of that table's runs, not of every run of the config
    (its finished run is written by hand: only the table job runs)."""
    from test_report import write_run  # tests/ is on sys.path under pytest

    config = mini_config() | {"name": "two", "seeds": [0]}
    table = {"rows": [], "columns": ["arm"], "metrics": ["test_acc"]}
    config["experiments"] = {
        name: {"kind": "table", "title": name, "arms": [{"label": name, "optimizer": name}], "table": table}
        for name in ("sam", "sgd")
    }
    path = str(write_config(tmp_path / "two.yaml", config))
    (run,) = ex.plan(ex.load_config(path)).runs["sam"]
    write_run(tmp_path / "results/runs", run, 0.9)
    (tmp_path / "results/runs" / run.path / "outcome.json").write_text('{"status": "complete"}')
    out = snakemake("--cores", "1", "results/two/tables/sam.md", "--configfile", path, cwd=tmp_path).stdout
    assert job_counts(out) == {"make_table": 1, "total": 1}
    assert "sampa workflow: 1 of 1 runs finished (1 other run of the config not needed here)\n" in out


def partial_config() -> dict:
    """A table of synthetic runs (one of them killed), a table whose runs need CIFAR-10 and one whose
    ImageNet is not here."""
    config = mini_config(small=True) | {"name": "partial", "seeds": [0]}
    table = {"rows": [], "columns": ["arm"], "metrics": ["test_acc"]}
    sam, sgd = {"label": "SAM", "optimizer": "sam"}, {"label": "SGD", "optimizer": "sgd"}
    sgd3 = {"label": "SGD-3", "optimizer": "sgd", "run": {"epochs": 3}}  # killed in epoch 3
    config["experiments"] = {
        "synth": {"kind": "table", "title": "synthetic", "arms": [sam, sgd, sgd3], "table": table},
        "cifar": {
            "kind": "table",
            "title": "cifar",
            "run": {"dataset": "cifar10"},
            "arms": [sam],
            "table": table,
        },
        "later": {
            "kind": "table",
            "title": "ImageNet",
            "run": {"dataset": "imagenet", "model": "resnet50", "batch_size": 8},
            "arms": [sam],
            "table": table,
        },
    }
    return config


def test_failed_and_impossible_runs_never_block_the_other_tables(tmp_path):
    config = str(write_config(tmp_path / "partial.yaml", partial_config()))
    plan = ex.plan(ex.load_config(config))
    sam, sgd, killed = (r.path for r in plan.runs["synth"])
    env = {"SAMPA_DATA": str(tmp_path / "no-data"), "SAMPA_DOWNLOAD": "0"}
    broken = tmp_path / "results/runs" / sgd / "config.json"  # the SGD run fails at start
    broken.parent.mkdir(parents=True)
    broken.write_text("{ damaged")
    kill = {"SAMPA_KILL_AT": "epoch3:step"}  # SIGKILL, as the out-of-memory killer: no record of its own

    first = snakemake("--cores", "2", "--configfile", config, cwd=tmp_path, env=env | kill).stdout
    assert "sampa workflow: 1 of 4 runs finished, 2 failed, 1 needs data" in first
    assert f"  failed: logs/runs/{sgd}.log" in first
    assert f"  failed: logs/runs/{killed}.log  (killed by SIGKILL" in first
    tables = tmp_path / "results/partial/tables"
    synth = (tables / "synth.md").read_text()
    assert re.search(r"\| SAM +\| SGD +\| SGD-3 +\|", synth) and re.search(
        r"\| \**\d+\.\d+\** +\| — \(failed\) +\| — \(failed\) +\|", synth
    ), synth
    assert re.search(r"\| +— \(needs data\) +\|", (tables / "cifar.md").read_text())
    assert (
        f"not run: needs ImageNet at {tmp_path / 'no-data' / 'imagenet'}" in (tables / "later.md").read_text()
    )
    assert (tmp_path / "results/partial/tables/reproduction.md").exists()

    # the next invocation retries what failed, never what finished
    counts = job_counts(snakemake("-n", "--configfile", config, cwd=tmp_path, env=env).stdout)
    assert counts["train_run"] == 3 and counts["prepare_data"] == 1
    finished = (tmp_path / "results/runs" / sam / "outcome.json").stat().st_mtime_ns
    broken.unlink()  # the cause is fixed
    again = snakemake("--cores", "2", "--configfile", config, cwd=tmp_path, env=env).stdout
    assert "sampa workflow: 3 of 4 runs finished (1 resumed from a checkpoint), 1 needs data" in again
    runs = pd.read_csv(tmp_path / "results/partial/runs.csv").set_index("run")
    assert (runs.loc[[sam, sgd, killed], "status"] == "complete").all()
    assert runs.loc[killed, "provenance.resumes"] == 1  # the killed run resumed its checkpoint
    assert (tmp_path / "results/runs" / sam / "outcome.json").stat().st_mtime_ns == finished


# ----------------------------------------------------------------------------------------------
# The whole smoke profile


SMOKE_LOOKSAM = ex.load_config(REPO / "configs" / "smoke.yaml")["method_hparams"]["looksam"]


@pytest.mark.parametrize(
    "method",
    [
        {"optimizer": "sgd"},
        {"optimizer": "sampa", "hparams": {"rho": 0.1, "lam": 0.2}},
        {"optimizer": "looksam", "hparams": SMOKE_LOOKSAM},  # its smoke setting (alpha 0.1, docs/methods.md)
    ],
    ids=["sgd", "sampa", "looksam"],
)
def test_the_smoke_profile_learns_so_a_broken_optimizer_shows(tmp_path, method):
    # one run of the smoke profile's settings (2 epochs): far above chance (10 %), about 90 % measured
    from sampa.config import config_from_dict
    from sampa.train import train

    run = ex.load_config(REPO / "configs" / "smoke.yaml")["run"]
    cfg = config_from_dict(run | method | {"seed": 0, "device": "cpu", "threads": 1})
    metrics = train(cfg, tmp_path / "run", log_progress=False)
    assert metrics["status"] == "complete" and metrics["test_acc"] >= 0.75, metrics["test_acc"]


def test_the_smoke_profile_runs_its_looksam_setting_everywhere():
    # arms.looksam (Tables 4, 14, SAM-step rates) and method_hparams (`arms: all`): the same runs
    plan = ex.plan(ex.load_config(REPO / "configs" / "smoke.yaml"))
    runs = {r.path: r for r in plan.unique_runs().values() if r.settings["optimizer"] == "looksam"}
    assert {r.experiment for r in runs.values()} == {"optimizers"}  # planned first, shared by the others
    assert all(r.settings["hparams"] == SMOKE_LOOKSAM for r in runs.values())
    assert {r.path for r in plan.runs["table4"] if r.settings["optimizer"] == "looksam"} == set(runs)


@pytest.mark.slow
def test_smoke_profile_end_to_end(tmp_path):
    smoke = REPO / "configs" / "smoke.yaml"
    plan = ex.plan(ex.load_config(smoke))
    snakemake("--cores", "2", "--configfile", str(smoke), cwd=tmp_path, timeout=3600)
    results, figures = tmp_path / "results/smoke", tmp_path / "figures/smoke"
    for name in plan.of_kind("table"):
        for ext in ("md", "tex", "csv"):
            assert (results / f"tables/{name}.{ext}").stat().st_size > 0
        md = (results / f"tables/{name}.md").read_text()
        assert md.startswith("> **SMOKE PROFILE") and "Missing runs" not in md
        if plan.specs[name].get("not_run"):  # Tables 5 and 6 without the vision/nlp extra
            assert "not run: needs the" in md and "extra" in md
        else:
            assert "±" in md
    for name in plan.of_kind("figure"):
        for ext in ("pdf", "png", "csv"):
            assert (figures / f"{name}.{ext}").stat().st_size > 0
    every = (results / "tables/optimizers.md").read_text()
    from sampa.optim import METHOD_NAMES

    for name in METHOD_NAMES:
        assert f"| {ex.method_label(name, {})} " in every, name
    runs = pd.read_csv(results / "runs.csv")
    assert len(runs) == len(plan.unique_runs()) and (runs["status"] == "complete").all()
    assert "Nothing to be done" in snakemake("-n", "--configfile", str(smoke), cwd=tmp_path).stdout
    snakemake("--report", str(tmp_path / "report.html"), "--configfile", str(smoke), cwd=tmp_path)
    assert (tmp_path / "report.html").stat().st_size > 0


@pytest.mark.slow
def test_the_doctors_workflow_check_runs_the_rules_commands_without_snakemake(tmp_path, monkeypatch):
    """Check 7 of ``sampa doctor`` on a machine without snakemake and jsonschema (the lent H200 image):
    the gpu-smoke jobs through the rules' own commands (train, aggregate, table); here a CPU miniature."""
    from sampa.doctor.suite import run_commands

    blocked = tmp_path / "blocked"
    for name in ("snakemake", "jsonschema"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed here')\n")
        monkeypatch.setitem(sys.modules, name, None)  # and in this process (the doctor's group)
    monkeypatch.setenv("PYTHONPATH", f"{blocked}{os.pathsep}{REPO}")  # the commands' processes
    config = yaml.safe_load((REPO / "configs" / "gpu-smoke.yaml").read_text())
    config["use_gpus"] = False
    config["run"] |= {"model": "tinycnn", "batch_size": 64}
    config["run"] |= {"synthetic_train_size": 256, "synthetic_test_size": 64}
    config["arms"]["sampa-0.2-fast"]["run"] = {"backend": "fused", "amp": "bf16", "channels_last": True}
    config["experiments"]["gpu-smoke"]["arms"] = ["sgd", "sampa-0.2-fast"]
    path = tmp_path / "work" / "gpu-smoke.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(config))
    assert run_commands(path, path.parent) == ""
    table = (path.parent / "results" / "gpu-smoke" / "tables" / "gpu-smoke.md").read_text()
    assert "| SGD " in table and "| SAMPa-0.2 (fused, bf16) " in table
    runs = pd.read_csv(path.parent / "results" / "gpu-smoke" / "runs.csv")
    assert sorted(runs["status"]) == ["complete", "complete"]
