"""RunConfig as the one source of its facts (flags, machine keys, checks); the pure learning rate;
the engine state and metrics keys shared by writer and reader."""

from __future__ import annotations

import math

import pytest
from problems import tiny_run

from sampa import experiments
from sampa.cli import _parser, config_from_args
from sampa.config import FIELD_TYPES, FIELDS, MACHINE_KEYS, RunConfig
from sampa.report.metrics import METRICS
from sampa.rundir import METRICS_KEYS, metrics_record
from sampa.train import NON_RESULT_KEYS, SCHEDULE_FACTORS, EngineState, lr_at, steps_per_epoch

DATA_SYNTHETIC = ("synthetic_train_size", "synthetic_test_size", "synthetic_distractor", "synthetic_noise")


def test_machine_keys_come_from_field_metadata_and_match_the_schema():
    machine = {"device", "threads", "num_workers", "data_root", "download", "dist_timeout_s"}
    assert set(MACHINE_KEYS) == machine
    assert experiments.MACHINE_KEYS is MACHINE_KEYS and set(MACHINE_KEYS) == NON_RESULT_KEYS
    forbidden = experiments.load_schema()["$defs"]["settings"]["propertyNames"]["not"]["enum"]
    assert set(forbidden) == set(MACHINE_KEYS) | set(experiments.RESERVED_KEYS)


def test_every_field_but_hparams_is_a_flag_that_sets_it():
    """Each flag sets its field to a non-default value (booleans both ways, betas as two numbers)."""
    for name, f in FIELDS.items():
        if name == "hparams":
            assert not f.metadata["flag"]
            continue
        default = getattr(RunConfig(), name)
        flag = f"--{name.replace('_', '-')}"
        if isinstance(default, bool):
            argv, want = ([f"--no-{flag[2:]}"], False) if default else ([flag], True)
        elif isinstance(default, tuple):
            argv, want = [flag, "0.5", "0.75"], [0.5, 0.75]
        elif isinstance(default, int | float):
            want = default + 1 if isinstance(default, int) else default / 2
            argv = [flag, repr(want)]
        elif FIELD_TYPES[name] == float | None:  # e.g. clip_norm: default null
            argv, want = [flag, "0.5"], 0.5
        elif FIELD_TYPES[name] == int | None:  # e.g. num_workers: default null
            argv, want = [flag, "3"], 3
        else:
            argv, want = [flag, "somewhere"], "somewhere"
        args = _parser().parse_args(["train", "--out", "x", *argv])
        assert getattr(args, name) == want, name


def test_the_read_when_table_names_real_settings_and_choices():
    """Each entry is a result setting decided by a field's valid values; its datasets are those the data
    modules implement (a dataset missing from IMAGE_DATASETS would silently lose its split, noise, Cutout)."""
    from sampa.config import (
        IMAGE_DATASETS,
        READ_WHEN,
        REGRESSION_DATASETS,
        SYNTHETIC_IMAGES,
        _datasets,
        check_value,
    )
    from sampa.data import DATASET_NAMES, IMAGE_SIZES

    assert IMAGE_DATASETS == DATASET_NAMES == tuple(IMAGE_SIZES) and set(SYNTHETIC_IMAGES) < set(
        DATASET_NAMES
    )
    assert REGRESSION_DATASETS == ("glue-stsb",)
    for key, when in READ_WHEN.items():
        assert key in FIELDS and key not in MACHINE_KEYS and when.by in FIELDS, key
        for value in [*(when.only or ()), *when.never]:
            check_value(when.by, value, FIELD_TYPES[when.by], FIELDS[when.by].metadata)
        for value in when.accepted:
            check_value(key, value, FIELD_TYPES[key], FIELDS[key].metadata)
        assert not when.strict or (when.why and when.fix), key
    assert set(_datasets()) >= {*IMAGE_DATASETS, *REGRESSION_DATASETS}


@pytest.mark.parametrize(
    ("run", "ignored"),
    [
        ({}, {"betas", "warmup", *DATA_SYNTHETIC}),  # CIFAR-10, SGD, cosine
        ({"dataset": "synthetic", "base_optimizer": "adamw", "schedule": "linear"}, {"momentum", "nesterov"}),
        ({"dataset": "imagenet"},
         {"betas", "warmup", "label_noise", "cutout", "val_fraction", *DATA_SYNTHETIC}),
        ({"dataset": "glue-rte", "base_optimizer": "adamw", "schedule": "linear"},
         {"momentum", "nesterov", "channels_last", "label_noise", "cutout", "val_fraction", *DATA_SYNTHETIC}),
        ({"dataset": "glue-stsb", "base_optimizer": "adamw", "schedule": "constant"},
         {"momentum", "nesterov", "channels_last", "label_noise", "cutout", "val_fraction", *DATA_SYNTHETIC,
          "label_smoothing", "warmup"}),
    ],
)  # fmt: skip
def test_ignored_keys_follow_the_dataset_base_optimizer_and_schedule(run, ignored):
    from sampa.config import ignored_keys

    assert set(ignored_keys(run)) == ignored


def test_flags_override_the_config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: tinycnn\ndataset: synthetic\nnesterov: true\ndevice: cpu\nmomentum: 0.8\n")
    args = _parser().parse_args(["train", "--config", str(path), "--out", "x", "--no-nesterov"])
    cfg = config_from_args(args)
    assert cfg.nesterov is False and cfg.momentum == 0.8
    path.write_text("model: tinycnn\ndataset: synthetic\nbase_optimizer: adamw\nbetas: [0.8, 0.9]\n")
    args = _parser().parse_args(["train", "--config", str(path), "--out", "x", "--betas", "0.5", "0.6"])
    assert config_from_args(args).betas == (0.5, 0.6)


@pytest.mark.parametrize("schedule", sorted(SCHEDULE_FACTORS))
def test_lr_at_matches_the_schedules_formula(schedule):
    cfg = tiny_run(schedule=schedule, epochs=4, lr=0.2)
    n = steps_per_epoch(cfg)
    assert n == math.ceil(180 / 32)  # 200 samples, 10% validation, batches of 32, the last one partial
    for epoch in range(4):
        for step in range(n):
            if schedule == "constant":
                want = 0.2
            elif schedule == "cosine":  # once per epoch, as CosineAnnealingLR(T_max=epochs)
                want = 0.5 * 0.2 * (1 + math.cos(math.pi * epoch / 4))
            elif schedule == "linear":  # every iteration, no warm-up: peak to 0 in a straight line
                want = 0.2 * (4 * n - (epoch * n + step)) / (4 * n)
            else:  # every iteration
                progress = (epoch * n + step) / (4 * n)
                want = 0.5 * 0.2 * (1 + math.cos(math.pi * progress))
            assert (
                lr_at(cfg, epoch, step) == pytest.approx(want, rel=1e-15, abs=0)
                if schedule == "linear"
                else lr_at(cfg, epoch, step) == want
            )  # bitwise: the refactor changed no learning rate
    assert lr_at(cfg, 0, 0) == 0.2


def test_lr_in_the_log_follows_lr_at(tmp_path):
    from sampa import io
    from sampa.train import train

    cfg = tiny_run(schedule="cosine_iter", epochs=2)
    train(cfg, tmp_path / "run", log_progress=False)
    rows = [io.json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == [lr_at(cfg, 0, 0), lr_at(cfg, 1, 0)]


def test_engine_state_round_trips_as_one_mapping():
    state = EngineState(
        epoch=2, history=[{"epoch": 1}, {"epoch": 2}], best_val_score=0.5, best_epoch=1, resumes=1
    )
    state.memory = [{"rank": 0}, {"rank": 1}]
    again = EngineState.from_dict(state.to_dict(), rank=1)
    assert again.memory == {"rank": 1} and again.history == state.history and again.epoch == 2
    old = {("best_val_acc" if k == "best_val_score" else k): v for k, v in state.to_dict().items()}
    assert EngineState.from_dict(old, rank=0).best_val_score == 0.5  # a checkpoint of an older engine
    with pytest.raises(ValueError, match="engine state keys"):
        EngineState.from_dict({**state.to_dict(), "extra": 1}, rank=0)
    with pytest.raises(ValueError, match="engine state keys"):
        EngineState.from_dict({"epoch": 1}, rank=0)


def test_metrics_keys_are_defined_once():
    record = metrics_record(dict.fromkeys(reversed(METRICS_KEYS)))
    assert list(record) == list(METRICS_KEYS)
    with pytest.raises(ValueError, match="extra"):
        metrics_record(dict.fromkeys(METRICS_KEYS) | {"extra": 1})
    # the report's columns name metrics.json keys (or log.jsonl keys for per-epoch series)
    for name, m in METRICS.items():
        if not m.per_epoch:
            assert m.column.split(".")[0] in METRICS_KEYS, name


def test_metrics_of_version_1_are_read_as_fractions(tmp_path):
    """metrics.json before version 2 had the text-task scores in percent; every reader gets fractions."""
    import json

    from sampa.rundir import DamagedFileError, read_metrics

    old = {"status": "complete", "diverged": False, "diverged_epoch": None, "epochs": 3,
           "epochs_completed": 3, "test_acc": 0.75, "test_task_metrics": {"acc": 75.0, "f1": 80.0},
           "test_task_score": 77.5, "best_val_task_score": 77.5}  # fmt: skip
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(old))
    read = read_metrics(path)
    assert read["test_task_metrics"] == {"acc": 0.75, "f1": 0.8} and read["test_acc"] == 0.75
    assert read["test_task_score"] == read["best_val_task_score"] == 0.775 and read["metrics_version"] == 2
    path.write_text(json.dumps(read))
    assert read_metrics(path) == read  # version 2 is read as written
    path.write_text(json.dumps(old | {"test_task_metrics": None, "test_task_score": None}))
    assert read_metrics(path)["test_task_score"] is None  # not a text task
    path.write_text(json.dumps(old | {"metrics_version": 3}))
    with pytest.raises(DamagedFileError, match=r"metrics.json: metrics_version 3 is not one of 1, 2"):
        read_metrics(path)


def test_schedules_are_the_configs_choices():
    from sampa.config import SCHEDULES

    assert set(SCHEDULE_FACTORS) == set(SCHEDULES)


def test_config_and_run_files_import_without_torch():
    """The presentation side (aggregate) reads run files and plans without importing torch."""
    import subprocess
    import sys
    from pathlib import Path

    modules = "sampa.config, sampa.experiments, sampa.rundir, sampa.report.metrics, sampa.glue_tasks"
    code = f"import sys, {modules}; print('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr
