"""Experiments as data: config -> planned runs (paths, merging, validation with one-line errors)."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest

from sampa import experiments as ex
from sampa.optim import METHOD_NAMES

BASE = {
    "name": "t",
    "seeds": [0, 1],
    "run": {"dataset": "synthetic", "model": "tinycnn", "epochs": 2},
    "arms": {
        "sgd": {"label": "SGD", "optimizer": "sgd", "run": {"epochs": 4}},
        "sam": {"label": "SAM", "optimizer": "sam", "hparams": {"rho": 0.05}},
        "sampa": {"label": "SAMPa-0.2", "optimizer": "sampa", "hparams": {"rho": 0.2, "lam": 0.2}},
    },
    "experiments": {
        "t1": {
            "kind": "table",
            "title": "T1",
            "arms": ["sgd", "sam", "sampa"],
            "grid": {"label_noise": [0.0, 0.4]},
            "overrides": [
                {"when": {"label_noise": 0.4, "optimizer": ["sam", "sampa"]}, "hparams": {"rho": 0.01}}
            ],
            "table": {"rows": ["label_noise"], "columns": ["arm"], "metrics": ["test_acc"]},
        }
    },
}


def config(**changes):
    cfg = copy.deepcopy(BASE)
    for path, value in changes.items():
        node = cfg
        keys = path.split("__")
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return cfg


def test_canonical_numbers_make_one_path():
    assert ex.canonical(0.05) == ex.canonical(5e-2) == ex.canonical(ex.normalize("5e-2")) == "0.05"
    assert ex.canonical(1) == ex.canonical(1.0) == "1"
    assert ex.canonical(1e-12) == "1e-12"
    assert ex.normalize({"rho": "5e-2", "n": "3", "name": "resnet56"}) == {
        "rho": 0.05,
        "n": 3,
        "name": "resnet56",
    }
    a = {"optimizer": "sam", "hparams": {"rho": 0.05}, "seed": 0, "dataset": "cifar10", "model": "resnet56"}
    b = {**a, "hparams": {"rho": 5e-2}}
    assert ex.run_path(a) == ex.run_path(b) == "cifar10/resnet56/sam/rho=0.05/default/seed0"


def test_plan_expands_arms_grid_seeds_with_overrides():
    plan = ex.plan(config())
    runs = plan.runs["t1"]
    assert len(runs) == 3 * 2 * 2
    by_cell = {(r.cell["arm"], r.cell["label_noise"], r.seed): r for r in runs}
    noisy_sam = by_cell[("SAM", "40%", 1)]
    assert noisy_sam.settings == {
        "dataset": "synthetic",
        "model": "tinycnn",
        "epochs": 2,
        "label_noise": 0.4,
        "optimizer": "sam",
        "hparams": {"rho": 0.01},
        "seed": 1,
    }
    assert noisy_sam.path == "synthetic/tinycnn/sam/rho=0.01/epochs=2,label_noise=0.4/seed1"
    # SGD has no rho: the override's optimizer condition keeps it out
    assert by_cell[("SGD", "40%", 0)].settings["hparams"] == {}
    # defaults are left out of paths: rho=0.05 is SAM's default, label_noise=0 RunConfig's
    assert by_cell[("SAM", "0%", 0)].path == "synthetic/tinycnn/sam/default/epochs=2/seed0"
    assert by_cell[("SGD", "0%", 0)].settings["epochs"] == 4  # the arm's run settings win over the config's


def test_identical_runs_of_two_experiments_share_a_directory():
    cfg = config()
    cfg["experiments"]["t2"] = {
        "kind": "figure",
        "title": "T2",
        "arms": [{"label": "SAM (rho 0.05)", "optimizer": "sam", "hparams": {"rho": "5e-2"}}],
        "figure": {"plot": "bars", "metrics": ["test_acc"]},
    }
    plan = ex.plan(cfg)
    assert len(plan.runs["t2"]) == 2
    unique = plan.unique_runs()
    assert len(unique) == 12  # t2's runs are t1's SAM runs at 0% noise
    assert {r.path for r in plan.runs["t2"]} <= {r.path for r in plan.runs["t1"]}


def test_all_arms_cover_the_registry_and_label_sampa_with_lambda():
    cfg = config(experiments__t1__arms="all", experiments__t1__overrides=[])
    cfg["method_hparams"] = {"sampa": {"lam": 0.5}}
    runs = ex.plan(cfg).runs["t1"]
    optimizers = {r.settings["optimizer"] for r in runs}
    assert optimizers == set(METHOD_NAMES)
    assert "SAMPa-0.5" in {r.cell["arm"] for r in runs}


def test_gpus_per_run():
    cfg = config()
    cfg["arms"]["sampa"]["run"] = {"devices": 2}
    plan = ex.plan(cfg)
    runs = {r.cell["arm"]: r for r in plan.runs["t1"]}
    assert runs["SAMPa-0.2"].gpus(use_gpus=True) == 2 and runs["SAM"].gpus(use_gpus=True) == 1
    assert runs["SAMPa-0.2"].gpus(use_gpus=False) == 0
    cfg["arms"]["sampa"]["run"] = {"devices": 8}  # two groups of four GPUs
    assert {r.cell["arm"]: r for r in ex.plan(cfg).runs["t1"]}["SAMPa-0.2"].gpus(use_gpus=True) == 8


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"arms__sam__optimizer": "adam"},
            r"experiment 't1' \(arm 'SAM', label_noise '0%'\): unknown optimizer 'adam'",
        ),
        ({"run__model": "resnet57"}, "unknown model 'resnet57'; choose one of: .*resnet56"),
        ({"run__dataset": "cifar11"}, "unknown dataset 'cifar11'"),
        ({"arms__sam__hparams": {"rho": -0.1}}, r"rho must be in \[0, inf\) \(got -0.1\)"),
        ({"arms__sampa__hparams": {"lam": 1.5}}, r"lam must be in \[0, 1\] \(got 1.5\)"),
        ({"arms__sampa__run": {"devices": 3}}, r"devices must be 1 or an even number .* \(got 3\)"),
        ({"arms__sam__hparams": {"k": 5}}, "unknown hyperparameter 'k' for method 'sam'"),
        ({"seeds": []}, r"seeds: \[\] should be non-empty"),
        ({"experiments__t1__seeds": [0, 0]}, "has non-unique elements"),
        ({"run__device": "cuda"}, r"run: key 'device' is not allowed here \(reserved: device, threads, "),
        ({"experiments__reproduction": {}}, r"experiments: key 'reproduction' is not allowed here"),
        # a typo'd key names the valid ones; a value of no alternative says what each wants
        ({"seed": [0]}, r"\(top level\): .*\('seed' was unexpected\); valid keys: name, .*, seeds, "),
        (
            {"arms__sam__hparam": {}},
            r"arms.sam: .*\('hparam' was unexpected\); valid keys: label, optimizer, ",
        ),
        (
            {"experiments__t1__tabel": {}},
            r"\('tabel' was unexpected\); valid keys: kind, title, .*, table, figure$",
        ),
        (
            {"experiments__t1__arms": "al"},
            r"arms: 'al' is not valid: 'all' was expected, or 'al' is not of type",
        ),
        # method_hparams is checked whether or not an experiment uses `arms: all`
        (
            {"method_hparams": {"samm": {}}},
            "method_hparams: unknown optimizer 'samm'; choose one of: .*sampa",
        ),
        (
            {"method_hparams": {"sam": {"rhoo": 1}}},
            "method_hparams.sam: unknown hyperparameter 'rhoo' .*: rho, eps",
        ),
        ({"method_hparams": {"sam": {"rho": -1}}}, r"method_hparams.sam: rho must be in \[0, inf\)"),
        ({"experiments__t1__arms": ["sgd", "nope"]}, "unknown arm 'nope'; arms defined: sgd, sam, sampa"),
        ({"experiments__t1__kind": "chart"}, "'chart' is not one of"),
        # an override whose `when` matches no run would silently change nothing
        (
            {"experiments__t1__overrides": [{"when": {"arm": "SAMM"}, "run": {"epochs": 3}}]},
            r"^experiment 't1': overrides\[0\]: when \{'arm': 'SAMM'\} matches no run "
            r"\(arms: SGD, SAM, SAMPa-0.2\)$",
        ),
        (
            {"overrides": [{"when": {"optimizer": "sam", "label_noise": 0.9}, "run": {"epochs": 3}}]},
            r"^overrides\[0\]: when .*'label_noise': 0.9\} matches no run of any experiment$",
        ),
        ({"experiments__t1__grid": {"label_noise": []}}, "should be non-empty"),
        # two arms with one label, or two grid points with one label, would fill the same table cells
        (
            {"arms__sam__label": "SGD"},
            r"^experiment 't1': two arms are labelled 'SGD' \(one table cell for both\); .*"
            r"\(labels: SGD, SGD, SAMPa-0.2\)$",
        ),
        (
            {"experiments__t1__grid": {"label_noise": [0.4, "4e-1"]}},
            r"^experiment 't1': grid axis 'label_noise' has two points labelled '40%'",
        ),
        ({"arms__sam__label": "SAM/0.05"}, r"^experiment 't1': arm label 'SAM/0.05' has a '/'"),
        ({"run__epochs": 0}, r"epochs must be an integer >= 1 \(got 0\)"),
        # table and figure settings: checked when the plan is built, not when the table is made
        (
            {"experiments__t1__table__metrics": ["test_accc"]},
            "unknown metric 'test_accc'; choose one of: test_acc",
        ),
        ({"experiments__t1__table__metrics": ["val_acc"]}, "metric 'val_acc' is a per-epoch quantity"),
        (
            {"experiments__t1__table__rows": ["label_nosie"]},
            "table axis 'label_nosie' is not one of: metric, arm",
        ),
        (
            {"experiments__t1__table__rows": []},
            "axis 'label_noise' varies, so it must be in the table's rows",
        ),
        ({"experiments__t1__table__metrics": ["test_acc", "devices"]}, "several metrics need 'metric'"),
        (
            {"experiments__t1__table__best_groups": [["SAM", "SAMPa"]]},
            "best_groups names 'SAMPa', not an arm",
        ),
        # new workflow keys: the schema rejects bad values
        ({"protect_timing": "yes"}, "protect_timing: 'yes' is not of type 'boolean'"),
        ({"python": ""}, "python: '' should be non-empty"),
        ({"runtime": {"resnet56": -1}}, "runtime.resnet56: -1 is less than or equal to the minimum of 0"),
        ({"runtime": [1]}, "runtime: \\[1\\] is not of type 'object'"),
    ],
)
def test_bad_config_is_one_line(changes, message):
    import re

    with pytest.raises(ex.PlanError) as err:
        ex.plan(config(**changes))
    text = str(err.value)
    assert "\n" not in text
    assert re.search(message, text), text


def test_a_global_override_for_a_disabled_experiment_is_kept_for_when_it_is_enabled():
    """An override of the config that matches only runs of an experiment the user disabled is not a typo:
    the plan goes on without it, and it applies once the experiment is enabled again."""
    cfg = config()
    cfg["experiments"]["t2"] = {
        **copy.deepcopy(cfg["experiments"]["t1"]),
        "enabled": False,
        "arms": ["sgd", {"label": "OptSAM", "optimizer": "optsam"}],
        "overrides": [],
    }
    cfg["overrides"] = [{"when": {"arm": "OptSAM"}, "run": {"epochs": 3}}]
    plan = ex.plan(cfg)
    assert list(plan.runs) == ["t1"]
    cfg["experiments"]["t2"]["enabled"] = True
    runs = ex.plan(cfg).runs["t2"]
    assert {r.settings.get("epochs") for r in runs if r.cell["arm"] == "OptSAM"} == {3}
    cfg["overrides"] = [{"when": {"arm": "OptSAMM"}, "run": {"epochs": 3}}]  # a typo still is one
    cfg["experiments"]["t2"]["enabled"] = False
    with pytest.raises(ex.PlanError, match=r"^overrides\[0\]: when \{'arm': 'OptSAMM'\} matches no run"):
        ex.plan(cfg)


def config_with_imagenet_table() -> dict:
    """The test config plus an ImageNet table "t3" (needs <data root>/imagenet/{train,val})."""
    cfg = config()
    cfg["experiments"]["t3"] = {
        "kind": "table",
        "title": "ImageNet",
        "run": {"dataset": "imagenet", "model": "resnet50", "batch_size": 8},
        "arms": ["sam"],
        "table": {"rows": ["arm"], "columns": ["metric"], "metrics": ["test_top1_acc", "test_top5_acc"]},
    }
    return cfg


def sam_table(run: dict, grid: dict | None = None) -> dict:
    """A table experiment of the SAM arm alone with these ``run`` settings (and ``grid``)."""
    spec = {
        "kind": "table",
        "title": "SAM",
        "run": run,
        "arms": ["sam"],
        "table": {"rows": ["arm"], "columns": ["metric"], "metrics": ["test_acc"]},
    }
    if grid:
        spec |= {"grid": grid, "table": {"rows": ["arm"], "columns": list(grid), "metrics": ["test_acc"]}}
    return spec


def test_a_text_run_leaves_out_the_image_data_settings_it_inherits():
    image_data = {"synthetic_train_size": 1280, "synthetic_noise": 0.15, "val_fraction": 0.2}
    cfg = config(run={**BASE["run"], **image_data})
    cfg["experiments"]["t6"] = sam_table({"dataset": "synthetic-text", "model": "bert-tiny", "lr": 3.0e-3})
    text = ex.expand_experiment(ex.resolve(cfg, "t6"))
    assert [r.path for r in text] == [
        f"synthetic-text/bert-tiny/sam/default/epochs=2,lr=0.003/seed{k}" for k in (0, 1)
    ]
    assert not any(set(r.settings) & set(image_data) for r in text)
    for run in ex.expand_experiment(ex.resolve(cfg, "t1")):  # image runs keep them
        assert {k: run.settings[k] for k in image_data} == image_data
        assert "synthetic_noise=0.15,synthetic_train_size=1280" in run.path and "val_fraction=0.2" in run.path


def test_a_run_leaves_out_the_data_settings_its_dataset_ignores():
    """CIFAR reads its validation split but not the synthetic generator's settings; the toy ImageFolder
    (a source, like ImageNet) reads neither: those settings would only split identical runs' paths."""
    image_data = {"synthetic_train_size": 1280, "synthetic_noise": 0.15, "val_fraction": 0.2}
    cfg = config(run={**BASE["run"], **image_data})
    for name, dataset, kept in (("cifar", "cifar10", "val_fraction=0.2"), ("toy", "imagefolder-toy", "")):
        cfg["experiments"][name] = sam_table({"dataset": dataset, "batch_size": 32})
        runs = ex.expand_experiment(ex.resolve(cfg, name))
        settings = ",".join(filter(None, ["batch_size=32", "epochs=2", kept]))
        assert [r.path for r in runs] == [f"{dataset}/tinycnn/sam/default/{settings}/seed{k}" for k in (0, 1)]
        assert not any(set(r.settings) & {"synthetic_train_size", "synthetic_noise"} for r in runs)


TEXT = {"dataset": "synthetic-text", "model": "bert-tiny"}


@pytest.mark.parametrize(
    ("run", "message"),
    [
        ({"base_optimizer": "adamw", "momentum": 0.5}, "momentum 0.5 is not read by base_optimizer 'adamw'"),
        ({"base_optimizer": "adamw", "nesterov": True},
         "nesterov true is not read by base_optimizer 'adamw'"),
        ({"betas": [0.8, 0.99]}, "betas [0.8, 0.99] is not read by base_optimizer 'sgd'"),
        ({**TEXT, "channels_last": True}, "channels_last true is not read by dataset 'synthetic-text'"),
        ({**TEXT, "dataset": "glue-stsb", "label_smoothing": 0.2},
         "label_smoothing 0.2 is not read by dataset 'glue-stsb'"),
    ],
)  # fmt: skip
def test_a_setting_the_run_ignores_is_refused_at_plan_time(run, message, tmp_path, capsys):
    """The workflow's plan (and `sampa plan`) validates every run: a value that run would silently ignore is
    one line naming the experiment, the setting and what to do, before any run starts."""
    import yaml

    from sampa.cli import main

    cfg = config()
    cfg["experiments"]["t9"] = sam_table(run)
    with pytest.raises(ex.PlanError) as err:
        ex.plan(copy.deepcopy(cfg))
    text = str(err.value)
    assert "\n" not in text and text.startswith("experiment 't9'") and message in text, text
    assert "; remove it" in text, text
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["plan", "--config", str(path), "--out", str(tmp_path / "plan.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and not (tmp_path / "plan.csv").exists(), err


def test_a_run_leaves_out_the_settings_it_ignores_and_accepts_their_defaults():
    """Defaults written out are accepted everywhere; a setting a run ignores is not in its path: STS-B with
    the GLUE experiment's label_smoothing 0 (no smoothing, what its squared error does) is the STS-B run
    without it, while a classification task keeps it."""
    cfg = config()
    glue = {"model": "bert-tiny", "base_optimizer": "adamw", "momentum": 0.9, "nesterov": False}
    cfg["experiments"]["glue"] = sam_table(
        {**glue, "label_smoothing": 0.0, "channels_last": False}, {"dataset": ["glue-rte", "glue-stsb"]}
    )
    cfg["experiments"]["stsb"] = sam_table({**glue, "dataset": "glue-stsb"})
    cfg["experiments"]["sgd"] = sam_table({"betas": [0.9, 0.999], "channels_last": True})
    paths = {
        name: [r.path for r in ex.expand_experiment(ex.resolve(cfg, name))]
        for name in ("glue", "stsb", "sgd")
    }
    settings = "base_optimizer=adamw,epochs=2"
    assert paths["glue"] == [
        *(f"glue-rte/bert-tiny/sam/default/{settings},label_smoothing=0/seed{k}" for k in (0, 1)),
        *(f"glue-stsb/bert-tiny/sam/default/{settings}/seed{k}" for k in (0, 1)),
    ]
    assert paths["stsb"] == paths["glue"][2:]
    assert paths["sgd"] == [
        f"synthetic/tinycnn/sam/default/channels_last=true,epochs=2/seed{k}" for k in (0, 1)
    ]


def test_shipped_run_paths_of_runs_with_ignored_settings():
    """The runs of the shipped configs that the table touches keep their paths (AdamW runs never named
    momentum, the fast path's channels_last stays in its image run's path); STS-B's leaves out the GLUE
    experiment's label_smoothing 0 (sampa.config.READ_WHEN: the regression task ignores it)."""
    root = Path(__file__).resolve().parents[1] / "configs"
    paper = ex.plan(ex.load_config(root / "paper.yaml")).specs
    paths = {r.path for name in ("table5", "table6") for r in ex.expand_experiment(paper[name])}
    text = "base_optimizer=adamw,batch_size=32,clip_norm=1,epochs=3"
    assert {
        "cifar10/vit-b16/sam/default/base_optimizer=adamw,clip_norm=1,epochs=10,lr=0.0001/seed0",
        f"glue-sst2/bert-base/sam/default/{text},label_smoothing=0,lr=2e-05,schedule=linear/seed0",
        f"glue-stsb/bert-base/sam/rho=0.005/{text},lr=2e-05,schedule=linear/seed0",
    } <= paths
    smoke = ex.plan(ex.load_config(root / "gpu-smoke.yaml")).specs["gpu-smoke"]
    assert (
        "synthetic/resnet20/sampa/default/amp=bf16,backend=fused,channels_last=true,cudnn_benchmark=true,"
        "epochs=1,optimizer_impl=fused,synthetic_train_size=5120/seed0"
    ) in {r.path for r in ex.expand_experiment(smoke)}


def test_label_noise_on_a_text_run_is_refused_at_plan_time():
    """Text data reads its labels as they are: a noise rate would be silently ignored; the plan refuses it."""
    cfg = config()
    cfg["experiments"]["t6"] = sam_table(
        {"dataset": "synthetic-text", "model": "bert-tiny", "label_noise": 0.4}
    )
    with pytest.raises(ex.PlanError) as err:
        ex.plan(cfg)
    text = str(err.value)
    assert "\n" not in text
    assert (
        "label_noise 0.4 is not read by dataset 'synthetic-text'" in text and "use label_noise 0" in text
    ), text


def test_experiment_whose_data_is_missing_plans_no_runs_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMPA_DATA", str(tmp_path))
    cfg = config_with_imagenet_table()
    plan = ex.plan(cfg)
    assert plan.runs["t3"] == [] and plan.runs["t1"]  # the other experiments are planned as before
    assert (
        plan.specs["t3"]["not_run"]
        == f"needs ImageNet at {tmp_path / 'imagenet'} (train/ and val/ class folders of JPEGs)"
    )
    assert "not_run" not in plan.specs["t1"]
    for split in ("train", "val"):
        (tmp_path / "imagenet" / split / "n01").mkdir(parents=True)
    again = ex.plan(cfg)
    assert len(again.runs["t3"]) == len(cfg["seeds"]) and "not_run" not in again.specs["t3"]


def test_cached_plan_is_made_again_when_missing_data_appears(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMPA_DATA", str(tmp_path / "data"))
    cfg = config_with_imagenet_table()
    cache = tmp_path / "plan.json"
    assert ex.cached_plan(cfg, cache).runs["t3"] == []
    assert ex.cached_plan(cfg, cache).runs["t3"] == []  # a hit: nothing changed
    for split in ("train", "val"):
        (tmp_path / "data" / "imagenet" / split).mkdir(parents=True)
    assert len(ex.cached_plan(cfg, cache).runs["t3"]) == len(cfg["seeds"])


def config_with_glue_table() -> dict:
    """The test config plus a GLUE table "t6" on RTE and WNLI (needs their TSVs and BERT-base's tokenizer)."""
    cfg = config()
    cfg["experiments"]["t6"] = {
        "kind": "table",
        "title": "GLUE",
        "run": {"model": "bert-tiny", "base_optimizer": "adamw", "lr": 2.0e-5, "batch_size": 32},
        "arms": ["sam", "sampa"],
        "grid": {"dataset": ["glue-rte", "glue-wnli"]},
        "table": {"rows": ["arm"], "columns": ["dataset", "metric"], "metrics": ["glue_acc"]},
    }
    return cfg


def fake_glue(root, *folders: str) -> None:
    """Empty GLUE TSVs of the tasks in ``folders`` and BERT-base's config under the data root ``root``."""
    for folder in folders:
        (root / "glue" / folder).mkdir(parents=True)
        for name in ("train.tsv", "dev.tsv"):
            (root / "glue" / folder / name).touch()
    (root / "weights" / "bert-base-uncased").mkdir(parents=True)
    (root / "weights" / "bert-base-uncased" / "config.json").write_text("{}")


def test_experiment_plans_the_runs_whose_data_is_here_and_lists_what_the_others_need(tmp_path, monkeypatch):
    from sampa import extras

    if not extras.available("nlp"):
        pytest.skip("GLUE runs need the nlp extra")
    monkeypatch.setenv("SAMPA_DATA", str(tmp_path))
    fake_glue(tmp_path, "RTE")  # WNLI is not here
    cfg = config_with_glue_table()
    plan = ex.plan(cfg)
    spec = plan.specs["t6"]
    assert {r.cell["dataset"] for r in plan.runs["t6"]} == {"RTE"}
    assert len(plan.runs["t6"]) == 2 * len(cfg["seeds"])  # SAM and SAMPa-0.2 on RTE
    assert "not_run" not in spec
    assert spec["needs"] == {
        "glue-wnli bert-tiny": [f"needs GLUE WNLI at {tmp_path / 'glue'} (WNLI/ TSVs or wnli/ parquet files)"]
    }
    assert ex.plan_experiment(spec) == plan.runs["t6"]  # what the table and the scorecard re-plan
    assert len(ex.expand_experiment(spec)) == 2 * 2 * len(cfg["seeds"])
    assert json.loads(ex.spec_json(spec))["needs"] == spec["needs"]  # travels to the table command
    assert len(plan.runs["t1"]) == 12 and "needs" not in plan.specs["t1"]
    cache = tmp_path / "plan.json"
    assert ex.cached_plan(cfg, cache).specs["t6"]["needs"] == spec["needs"]
    fake_glue(tmp_path / "more", "RTE", "WNLI")
    shutil.copytree(tmp_path / "more" / "glue" / "WNLI", tmp_path / "glue" / "WNLI")
    assert len(ex.cached_plan(cfg, cache).runs["t6"]) == 8  # WNLI arrived: the cache is not used
    shutil.rmtree(tmp_path / "glue" / "WNLI")

    (tmp_path / "glue" / "RTE" / "dev.tsv").unlink()  # no task left: the whole table is "not run"
    spec = ex.plan(cfg).specs["t6"]
    assert "needs" not in spec and spec["not_run"].startswith("needs GLUE RTE, WNLI at ")
    monkeypatch.setenv("SAMPA_DATA", str(tmp_path / "more"))
    again = ex.plan(cfg)
    assert len(again.runs["t6"]) == 8 and not {"needs", "not_run"} & set(again.specs["t6"])


def test_resolved_spec_is_self_contained_json():
    cfg = config()
    spec = ex.resolve(cfg, "t1")
    again = ex.resolve(copy.deepcopy(cfg), "t1")
    assert ex.spec_json(spec) == ex.spec_json(again)
    assert [a["label"] for a in spec["arms"]] == ["SGD", "SAM", "SAMPa-0.2"]
    assert spec["seeds"] == [0, 1] and spec["run"]["epochs"] == 2
    assert [r.path for r in ex.plan_experiment(spec)] == [r.path for r in ex.plan(cfg).runs["t1"]]


def test_a_planned_spec_expands_to_the_same_runs_from_its_recorded_method_defaults():
    """The table, figure and scorecard commands expand a spec the workflow planned from the method
    defaults recorded in it (no torch, no second validation): the same runs, paths and cells as
    validating every run, for every experiment of the paper config."""
    from dataclasses import asdict

    from sampa.optim import method_class

    plan = ex.plan(ex.load_config(Path(__file__).resolve().parents[1] / "configs" / "paper.yaml"))
    for name, spec in plan.specs.items():
        assert set(spec["method_defaults"]) == {arm["optimizer"] for arm in spec["arms"]}, name
        validating = {k: v for k, v in spec.items() if k != "method_defaults"}
        assert ex.expand_experiment(spec) == ex.expand_experiment(validating), name
    sampa = asdict(method_class("sampa").Hparams())
    assert plan.specs["table1"]["method_defaults"]["sampa"] == sampa
    # the recorded defaults are what decides: another default of lam names the default run's lam
    spec = copy.deepcopy(plan.specs["table1"])
    spec["method_defaults"]["sampa"]["lam"] = sampa["lam"] + 0.1
    before = {r.path for r in ex.expand_experiment(plan.specs["table1"])}
    changed = {r.path for r in ex.expand_experiment(spec)} - before
    assert changed and all(f"lam={ex.canonical(sampa['lam'])}" in path for path in changed)
    for spec in plan.specs.values():
        ex.check_spec(spec, "--spec")  # a planned spec is a resolved experiment


def _planned_table1() -> dict:
    plan = ex.plan(ex.load_config(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"))
    return copy.deepcopy(plan.specs["table1"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"method_defaults": [1]}, r"method_defaults: \[1\] is not of type 'object'$"),
        ({"method_defaults": {"sampa": 0.2}}, r"method_defaults.sampa: 0.2 is not of type 'object'$"),
        ({"method_defaults": {"adam": {}}}, r"method_defaults: 'adam' is not one of \['aesam', .*'vsam'\]$"),
        ({"method_defaults": {"sam": {"rho": [0.05]}}}, r"method_defaults.sam.rho: \[0.05\] is not of type"),
        ({"method_defaults": {"sam": {"rho": {"a": 1}}}}, r"method_defaults.sam.rho: \{'a': 1\} is not"),
        ({"needs": "cifar10"}, r"needs: 'cifar10' is not of type 'object'$"),
        ({"needs": {"cifar10 resnet56": "data"}}, r"needs.cifar10 resnet56: 'data' is not of type 'array'$"),
        ({"not_run": 1}, r"not_run: 1 is not of type 'string'$"),
        ({"note": None}, r"note: None is not of type 'string'$"),
    ],
)  # fmt: skip
def test_check_spec_checks_what_plan_adds(change, message):
    with pytest.raises(ex.PlanError, match=r"^--spec is not a resolved experiment: " + message):
        ex.check_spec({**_planned_table1(), **change}, "--spec")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda spec: spec.update(id="table/1"), r"^experiment id 'table/1' names files .*: use letters, "),
        (lambda spec: spec.update(id="table 1"), r"^experiment id 'table 1' names files"),
        (
            lambda spec: spec["arms"][1].update(label=spec["arms"][0]["label"]),
            r"^experiment 'table1': two arms are labelled 'SGD'",
        ),
        (lambda spec: spec["arms"][0].update(label="S/GD"), r"^experiment 'table1': arm label 'S/GD' has"),
    ],
)
def test_check_spec_refuses_ids_and_labels_that_break_files_or_cells(change, message):
    spec = _planned_table1()
    change(spec)
    with pytest.raises(ex.PlanError, match=message):
        ex.check_spec(spec, "--spec")


def test_a_planned_spec_knows_its_methods_hyperparameters_without_torch():
    """With recorded method defaults no run is validated (no torch), but a hyperparameter they do not
    name is still an error, as check_method would say it."""
    spec = _planned_table1()
    arm = next(a for a in spec["arms"] if a["optimizer"] == "sam")
    arm["hparams"]["rh0"] = 0.1
    with pytest.raises(ex.PlanError, match=r"\(arm 'SAM'.*\): unknown hyperparameter 'rh0' for method 'sam'"):
        ex.check_spec(spec, "--spec")


def test_method_names_without_torch_are_the_registry():
    from sampa.names import METHOD_NAMES as torch_free
    from sampa.optim import METHOD_NAMES

    assert torch_free == METHOD_NAMES


def test_cached_plan_equals_plan_and_follows_changes(tmp_path):
    cache = tmp_path / "plan.json"
    fresh = ex.plan(config())
    first = ex.cached_plan(config(), cache)
    again = ex.cached_plan(config(), cache)  # read back from the file
    assert cache.exists()
    assert again.runs == first.runs == fresh.runs and again.specs == fresh.specs
    changed = ex.cached_plan(config(seeds=[0, 1, 2]), cache)
    assert len(changed.runs["t1"]) == 3 * 2 * 3  # a changed config is planned again


def test_cached_plan_checks_the_structure_only_when_it_plans(tmp_path, monkeypatch):
    cache, checked = tmp_path / "plan.json", []

    def check(cfg):
        checked.append(cfg["name"])
        return cfg

    ex.cached_plan(config(), cache, check)
    ex.cached_plan(config(), cache, check)  # a hit: no schema validation (it is most of the cost)
    assert checked == ["t"]
    with pytest.raises(ex.PlanError, match="name"):  # without a check: the schema's own, one line
        ex.cached_plan(config() | {"name": 5}, tmp_path / "other.json")
    schema = tmp_path / "schema.yaml"  # an edited schema invalidates the cache
    schema.write_text(ex.SCHEMA_PATH.read_text() + "\n# edited\n")
    monkeypatch.setattr(ex, "SCHEMA_PATH", schema)
    ex.cached_plan(config(), cache, check)
    assert checked == ["t", "t"]


def test_machine_keys_are_the_engines_non_result_keys():
    from sampa.train import NON_RESULT_KEYS

    assert set(ex.MACHINE_KEYS) == NON_RESULT_KEYS
    forbidden = ex.load_schema()["$defs"]["settings"]["propertyNames"]["not"]["enum"]
    assert set(ex.MACHINE_KEYS) | set(ex.RESERVED_KEYS) == set(forbidden)


def figure_config(**layout):
    cfg = config()
    cfg["experiments"]["f"] = {
        "kind": "figure",
        "title": "F",
        "arms": ["sam"],
        "grid": {"hparams.rho": [0.01, 0.05]},
        "figure": {"plot": "line", "x": "hparams.rho", **layout},
    }
    return cfg


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"x": "hparams.rh"}, "figure x 'hparams.rh' is not a grid axis; grid axes: hparams.rho"),
        ({"facet": "model"}, "figure facet 'model' is not a grid axis"),
        ({"metrics": ["grad_cosine"]}, "metric 'grad_cosine' is a per-epoch quantity"),
        ({"metrics": ["tset_acc"]}, "unknown metric 'tset_acc'"),
        ({"plot": "epochs", "metrics": ["test_acc"]}, "metric 'test_acc' is a final quantity"),
    ],
)
def test_bad_figure_setting_stops_the_plan(layout, message):
    ex.plan(figure_config())  # the unchanged figure plans
    with pytest.raises(ex.PlanError, match=message) as err:
        ex.plan(figure_config(**layout))
    assert "\n" not in str(err.value)


def test_timing_runs_are_those_of_time_and_memory_experiments():
    cfg = config()
    cfg["experiments"]["speed"] = {
        "kind": "table",
        "title": "speed",
        "arms": ["sam"],
        "table": {"rows": ["metric"], "columns": ["arm"], "metrics": ["test_acc", "time_per_epoch_s"]},
    }
    plan = ex.plan(cfg)
    assert plan.timing == ["speed"]
    assert plan.timing_runs() == {r.path for r in plan.runs["speed"]} and len(plan.timing_runs()) == 2
    assert ex.is_measured("memory_per_device_mib") and ex.is_measured("communication_share")
    assert not ex.is_measured("test_acc") and not ex.is_measured("sequential_grads")


def test_too_few_gpus_are_refused_at_planning_time():
    cfg = config(use_gpus=True)
    cfg["arms"]["sampa"]["run"] = {"devices": 2}
    plan = ex.plan(cfg)
    ex.check_devices(plan, 2)
    with pytest.raises(
        ex.PlanError, match=r"run synthetic/tinycnn/sampa/.* needs 2 GPUs but the workflow may use 1"
    ):
        ex.check_devices(plan, 1)
    ex.check_devices(ex.plan(config()), 0)  # use_gpus false: no run needs a GPU


def test_cluster_runtime_follows_epochs_and_model_with_override():
    assert ex.runtime_minutes({"model": "resnet56", "epochs": 3}) == ex.RUNTIME_MINIMUM
    assert ex.runtime_minutes({"model": "wrn28-10", "epochs": 200}) == 200 * 1.5 * ex.RUNTIME_MARGIN
    assert ex.runtime_minutes({"model": "wrn28-10", "epochs": 200}, {"wrn28-10": 0.5}) == 300
    from sampa.models import MODEL_NAMES
    from sampa.models.pretrained import SOURCE_MODEL_NAMES

    assert set(ex.MINUTES_PER_EPOCH) >= {*MODEL_NAMES, *SOURCE_MODEL_NAMES}


def test_cifar_runs_get_their_dataset_prepared():
    assert ex.plan(config()).prepared_datasets() == []
    assert ex.plan(config(run__dataset="cifar100")).prepared_datasets() == ["cifar100"]
    cifar10 = ex.plan(config(run__dataset="cifar10"))  # the default dataset: not in the run's settings
    assert set(cifar10.data) == set(cifar10.unique_runs()) and cifar10.prepared_datasets() == ["cifar10"]


def test_plan_and_table_commands_show_a_partial_experiment(tmp_path, monkeypatch, capsys):
    import yaml

    from sampa import extras
    from sampa.cli import main

    if not extras.available("nlp"):
        pytest.skip("GLUE runs need the nlp extra")
    monkeypatch.setenv("SAMPA_DATA", str(tmp_path))
    fake_glue(tmp_path, "RTE")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_with_glue_table()))
    assert main(["plan", "--config", str(path)]) == 0
    wnli = f"needs GLUE WNLI at {tmp_path / 'glue'} (README: Tables 3, 5 and 6)"
    assert f"partial: 4 of 8 runs here (the rest {wnli})" in capsys.readouterr().out
    md, runs = tmp_path / "t6.md", tmp_path / "runs.csv"
    runs.write_text("run,status\n")  # nothing finished yet
    args = ["table", "--config", str(path), "--experiment", "t6", "--runs", str(runs), "--md", str(md)]
    assert main(args) == 0
    text = md.read_text()
    assert (
        re.search(r"\| SAM +\| — +\| — \[a\] +\|", text) and "[a] not run here: needs GLUE WNLI at " in text
    )
    missing = next(line for line in text.splitlines() if line.startswith("Missing runs"))
    assert missing.startswith("Missing runs (4): glue-rte/") and "wnli" not in missing  # RTE's: not finished
