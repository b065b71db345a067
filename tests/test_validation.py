"""Bad input on every subcommand: one line naming the key, the value and what is valid; exit 2; nothing
written. The train checks come from RunConfig's field types and metadata (one mechanism)."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sampa import io
from sampa.cli import main
from sampa.config import FIELD_TYPES, FIELDS, ConfigError, RunConfig, config_from_dict, validate

ROOT = Path(__file__).resolve().parents[1]

#: a resolved table experiment, as the workflow passes it (--spec)
SPEC = json.dumps(
    {"id": "t", "kind": "table", "title": "T", "seeds": [0], "run": {}, "grid": {}, "overrides": [],
     "arms": [{"label": "SAM", "optimizer": "sam", "hparams": {}, "run": {}}],
     "table": {"rows": ["arm"], "columns": ["metric"], "metrics": ["test_acc"]}}
)  # fmt: skip
#: a resolved line figure over lr (facet: a grid axis it lacks)
FIG_SPEC = (
    SPEC.replace('"kind": "table"', '"kind": "figure"').replace('"grid": {}', '"grid": {"lr": [0.1]}')
    .replace('"table": {"rows": ["arm"], "columns": ["metric"], "metrics": ["test_acc"]}',
             '"figure": {"plot": "line", "x": "lr", "facet": "wd"}')
)  # fmt: skip
TOY = ["figure", "--config", "configs/smoke.yaml", "--experiment", "figure1", "--pdf", "{tmp}/f.pdf",
       "--png", "{tmp}/f.png"]  # fmt: skip
TRAIN = ["train", "--model", "tinycnn", "--dataset", "synthetic", "--epochs", "1", "--device", "cpu"]


def one_line_error(argv: list[str], capsys, command: str) -> str:
    try:
        code = main(argv) if argv[0] != "aggregate" else _aggregate(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"sampa {command}: error: "), err
    assert "usage:" not in err
    return err


def _aggregate(argv: list[str]) -> int:
    from sampa.report.commands import main as report_main

    return report_main(argv)


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("nesterov: 'no'", r"nesterov must be true or false \(got 'no'\)"),
        ("test_every_epoch: 1", r"test_every_epoch must be true or false \(got 1\)"),
        ("download: 'no'", r"download must be true or false \(got 'no'\)"),
        ("channels_last: yes please", r"channels_last must be true or false"),
        ("data_root: 5", r"data_root must be a path \(a non-empty string\) or null \(got 5\)"),
        ("data_root: ''", r"data_root must be a path"),
        ("lr: .inf", r"lr must be a finite number \(got inf\)"),
        ("weight_decay: .inf", r"weight_decay must be a finite number \(got inf\)"),
        ("momentum: .nan", r"momentum must be a finite number \(got nan\)"),
        ("lr: '0.1'", r"lr must be a number \(got '0.1'\)"),
        ("batch_size: 2.5", r"batch_size must be an integer >= 1 \(got 2.5\)"),
        ("batch_size: true", r"batch_size must be an integer >= 1 \(got True\)"),
        ("seed: 18446744073709551616", r"seed must be an integer in \[0, 9223372036854775808\)"),
        ("seed: -1", r"seed must be an integer >= 0 \(got -1\)"),
        ("betas: 5", r"betas must be 2 numbers \(got 5\)"),
        ("betas: [0.9]", r"betas must be 2 numbers \(got \(0.9,\)\)"),
        ("betas: [0.9, 1.5]", r"betas\[1\] must be in \[0, 1\) \(got 1.5\)"),
        ("hparams: [1, 2]", r"hparams must be a mapping of names to values \(got \[1, 2\]\)"),
        ("hparams: rho", r"hparams must be a mapping"),
        ("val_fraction: 0", r"val_fraction must be in \(0, 1\) \(got 0\)"),
        ("dist_timeout_s: 0", r"dist_timeout_s must be in \(0, inf\)"),
        ("num_workers: -1", r"num_workers must be an integer >= 0 \(got -1\)"),
        ("num_workers: 2.5", r"num_workers must be an integer >= 0 \(got 2.5\)"),
        ("synthetic_noise: -0.1", r"synthetic_noise must be in \[0, inf\) \(got -0.1\)"),
        ("synthetic_distractor: .nan", r"synthetic_distractor must be a finite number \(got nan\)"),
        ("schedule: step", r"unknown schedule 'step'; choose one of: cosine, cosine_iter, constant, linear"),
        ("base_optimizer: adam", r"unknown base_optimizer 'adam'; choose one of: sgd, adamw"),
        ("schedule: 5", r"schedule must be a non-empty string \(got 5\)"),
        ("hparams: {rho: .inf}", r"hparams.rho must be a finite number \(got inf\)"),
        ("learning_rate: 0.1", r"unknown config key 'learning_rate'"),
        ("- 1", r"config file .* must hold a mapping"),
    ],
)
def test_bad_config_file_values(tmp_path, capsys, yaml_text, message):
    path = tmp_path / "run.yaml"
    path.write_text(yaml_text + "\n")
    out = tmp_path / "run"
    err = one_line_error([*TRAIN, "--config", str(path), "--out", str(out)], capsys, "train")
    assert re.search(message, err), err
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lr", "abc"], r"argument --lr: invalid float value: 'abc'"),
        (["--lr", "inf"], r"lr must be a finite number \(got inf\)"),
        (["--epochs", "1.5"], r"argument --epochs: invalid int value: '1.5'"),
        (["--num-workers", "-2"], r"num_workers must be an integer >= 0 \(got -2\)"),
        (["--num-workers", "auto"], r"argument --num-workers: invalid int value: 'auto'"),
        (["--betas", "0.9"], r"argument --betas: expected 2 arguments"),
        (["--hp", "rho=[1"], r"--hp 'rho=\[1': the value is not valid YAML"),
        (["--optimizer", "sam", "--hp", "rho=.inf"], r"hparams.rho must be a finite number \(got inf\)"),
        (["--optimizer", "sam", "--rho", "inf"], r"hparams.rho must be a finite number \(got inf\)"),
        (["--settings", "[1]"], r"--settings must be a JSON mapping"),
        (["--settings", '{"lr": Infinity}'], r"lr must be a finite number"),
        (["--seed", str(2**64)], r"seed must be an integer in \[0, "),
        (["--synthetic-noise", "-1"], r"synthetic_noise must be in \[0, inf\) \(got -1.0\)"),
        (["--bogus"], r"unrecognized arguments: --bogus"),
        (["--threads", str(2**40)], r"threads must be an integer in \[0, 2147483648\) \(got 1099511627776\)"),
        (["--synthetic-train-size", "100", "--val-fraction", "0.001"],
         r"val_fraction 0.001 holds out 0 of 100 training samples of synthetic; it must hold out 1 to 99"),
        (["--synthetic-train-size", "100", "--val-fraction", "0.999"],
         r"holds out 100 of 100 training samples"),
        (["--dataset", "synthetic-text"],
         r"model 'tinycnn' cannot read the text dataset 'synthetic-text'; choose a text model: "
         r"bert-base, bert-tiny$"),
        (["--model", "bert-tiny"],
         r"model 'bert-tiny' cannot read the image dataset 'synthetic'; choose an image model: .*tinycnn"),
        (["--cutout", "33"],
         r"cutout 33 must be 0 \(off\) or a patch side of 1 to 32 pixels for the 32x32 images of synthetic$"),
        (["--cutout", "64", "--dataset", "cifar100"], r"cutout 64 must be 0 \(off\) or a patch side"),
        (["--cutout", "-1"], r"cutout must be an integer >= 0 \(got -1\)"),
        (["--cutout", "16", "--dataset", "synthetic-text", "--model", "bert-tiny"],
         r"cutout 16 is not read by dataset 'synthetic-text' \(Cutout is implemented for cifar10, "
         r"cifar100, synthetic, synthetic100 only\); use cutout 0$"),
        (["--label-noise", "0.4", "--dataset", "synthetic-text", "--model", "bert-tiny"],
         r"error: label_noise 0.4 is not read by dataset 'synthetic-text' \(label noise is "
         r"implemented for cifar10, cifar100, synthetic, synthetic100 only\); use label_noise 0$"),
        (["--label-noise", "0.2", "--dataset", "imagenet", "--model", "resnet50"],
         r"error: label_noise 0.2 is not read by dataset 'imagenet'"),
        # settings the run would silently ignore (sampa.config.READ_WHEN)
        (["--nesterov", "--base-optimizer", "adamw"],
         r"error: nesterov true is not read by base_optimizer 'adamw' \(Nesterov momentum is SGD's\); "
         r"remove it or use base_optimizer 'sgd'$"),
        (["--momentum", "0.5", "--base-optimizer", "adamw"],
         r"error: momentum 0.5 is not read by base_optimizer 'adamw' \(AdamW uses betas\); "
         r"remove it or use base_optimizer 'sgd'$"),
        (["--betas", "0.8", "0.99"],
         r"error: betas \[0.8, 0.99\] is not read by base_optimizer 'sgd' \(SGD uses momentum\); "
         r"remove it or use base_optimizer 'adamw'$"),
        (["--label-smoothing", "0.2", "--dataset", "glue-stsb", "--model", "bert-tiny"],
         r"error: label_smoothing 0.2 is not read by dataset 'glue-stsb' \(a regression task: its loss is "
         r"the squared error\); remove it or use label_smoothing 0$"),
        (["--channels-last", "--dataset", "synthetic-text", "--model", "bert-tiny"],
         r"error: channels_last true is not read by dataset 'synthetic-text' \(text models read token ids, "
         r"not images\); remove it \(false\)$"),
        (["--gpu-lock-dir", "locks"], r"--gpu-lock-dir 'locks' needs --gpus"),
        (["--config", ""], r"cannot read config file '': Is a directory"),
        (["--config", "run\0.yaml"], r"cannot read config file 'run\\x00.yaml': embedded null byte"),
        (["--out", "run\0"], r"--out must name the run's directory \(got 'run\\x00'\)"),
        (["--dataset", "cifar10", "--data-root", __file__],  # was mkdir's "File exists", exit 1
         r"data_root '.*test_validation.py' is not a folder \(a file is in its place\); give a folder$"),
    ],
)  # fmt: skip
def test_bad_flags(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    err = one_line_error([*TRAIN, "--out", str(out), *flags], capsys, "train")
    assert re.search(message, err), err
    assert not out.exists()


def test_empty_out_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = one_line_error([*TRAIN, "--out", ""], capsys, "train")
    assert "--out must name the run's directory (got '')" in err
    assert list(tmp_path.iterdir()) == []


def test_cuda_without_cuda(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    err = one_line_error([*TRAIN, "--out", str(tmp_path / "r"), "--device", "cuda"], capsys, "train")
    assert "device 'cuda': CUDA is not available here; use --device cpu or auto" in err


def test_cuda_index_beyond_the_gpus(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    out = tmp_path / "r"
    err = one_line_error([*TRAIN, "--out", str(out), "--device", "cuda:2"], capsys, "train")
    assert "device 'cuda:2': this machine has 2 GPU(s) (cuda:0 to cuda:1)" in err
    assert not out.exists()


def test_gpus_are_claimed_before_anything_initialises_cuda(tmp_path, monkeypatch):
    """``--device cuda --gpus 1``: CUDA reads CUDA_VISIBLE_DEVICES once, when it is initialised
    (torch.cuda.is_available does that), so nothing may initialise it before the claim sets it."""
    import torch

    from sampa import gpus

    events = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # NVML's count: CUDA stays uninitialised
    monkeypatch.setattr(torch.cuda, "is_available", lambda: events.append("CUDA initialised") or True)
    monkeypatch.setattr(torch._C, "_cuda_getDeviceCount", lambda: events.append("CUDA initialised") or 2)

    def claim(count, **_):
        events.append(f"claimed {count}")
        raise gpus.GpuError("stop here: the run itself is not the point")

    monkeypatch.setattr(gpus, "claim", claim)
    out = tmp_path / "r"
    assert main([*TRAIN, "--out", str(out), "--device", "cuda", "--gpus", "1"]) == 2
    assert events == ["claimed 1"]


def test_config_file_that_is_not_utf8(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_bytes(b"model: tiny\xffcnn\n")
    err = one_line_error([*TRAIN, "--config", str(path), "--out", str(tmp_path / "r")], capsys, "train")
    assert "is not UTF-8 text" in err


def test_help_shows_usage_and_every_field_flag(capsys):
    with pytest.raises(SystemExit) as done:
        main(["train", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage:")
    for name in FIELDS:
        if name != "hparams":
            assert f"--{name.replace('_', '-')}" in text, name
    assert "--no-nesterov" in text and "--no-download" in text


def _flag_help(argv: list[str], capsys) -> dict[str, str]:
    """Each flag of ``argv --help`` -> its help text (one line, whatever the terminal width)."""
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    options = capsys.readouterr().out.split("options:", 1)[1]
    entries = re.split(r"\n  (?=-)", options)
    return {e.split()[0].split(",")[0]: " ".join(e.split()) for e in entries if e.strip().startswith("--")}


@pytest.mark.parametrize(
    ("flag", "wanted"),
    [
        ("--schedule", "one of: cosine, cosine_iter, constant, linear; default: cosine"),
        ("--optimizer", "one of: aesam, asam,"),
        ("--amp", "one of: off, bf16; default: off"),
        ("--cutout", "in pixels"),
        ("--cutout", "an integer >= 0; default: 0"),
        ("--label-noise", "(0.4 = 40%); CIFAR and synthetic images only (in [0, 1); default: 0.0)"),
        ("--warmup", "fraction of all training steps"),
        ("--val-fraction", "(in (0, 1); default: 0.1)"),
        ("--betas", "each in [0, 1); default: (0.9, 0.999)"),
        ("--dist-timeout-s", "seconds"),
        ("--seed", "an integer in [0, 9223372036854775808)"),
    ],
)
def test_train_help_names_units_choices_and_ranges(capsys, flag, wanted):
    assert wanted in _flag_help(["train"], capsys)[flag]


def _below_range(meta) -> str:
    """A value just outside a range's lower end."""
    return str(meta["low"] if meta["low_open"] else meta["low"] - 1)


#: every ranged number flag of train (RunConfig's floats and --rho, --lam) with a value below its range
RANGED = [
    *((f"--{n.replace('_', '-')}", _below_range(f.metadata)) for n, f in FIELDS.items()
      if FIELD_TYPES[n] in (float, float | None) and f.metadata["low"] is not None),
    ("--rho", "-1"),
    ("--lam", "-1"),
]  # fmt: skip


@pytest.mark.parametrize(("flag", "value"), RANGED)
def test_a_flags_help_and_its_error_write_its_range_alike(capsys, flag, value):
    """The help shows the range (and the default) of --rho and --lam too, and every message writes a range
    one way: an infinite end open, as in the help ("[0, inf)", never "[0, inf]")."""
    shown = re.search(r"\(in ([\[(][^;]+); default: ", _flag_help(["train"], capsys)[flag])
    assert shown, flag
    argv = [*TRAIN, "--optimizer", "sampa", flag, value, "--out", "unused"]
    err = one_line_error(argv, capsys, "train")
    assert f"must be in {shown[1]} (got " in err, (shown[1], err)


def test_toy_help_names_every_range(capsys):
    helps = _flag_help(["toy"], capsys)
    assert "an integer >= 2; default: 2000" in helps["--steps"]
    assert "each in [0, 1]" in helps["--lams"] and "in [0, inf)" in helps["--decay"]
    assert all("default:" in helps[f"--{n}"] for n in ("steps", "lr", "decay", "rho", "lams", "seed"))


@pytest.mark.parametrize(
    ("argv", "command", "message"),
    [
        (["toy", "--out", "{tmp}/t.csv", "--rho", "nan"], "toy", r"--rho must be a finite number"),
        (["toy", "--out", "{tmp}/t.csv", "--lr", "nan"], "toy", r"--lr must be a finite number"),
        (["toy", "--out", "{tmp}/t.csv", "--decay", "-5"], "toy", r"--decay must be in \[0, inf\)"),
        (["toy", "--out", "{tmp}/t.csv", "--steps", "1"], "toy", r"--steps must be an integer >= 2"),
        (["toy", "--out", "{tmp}/t.csv", "--lams", "a,b"], "toy", r"--lams must be comma-separated numbers"),
        (["toy", "--out", "{tmp}/t.csv", "--lams", ","], "toy", r"--lams must be one or more numbers"),
        (["toy", "--out", "{tmp}"], "toy", r"--out must be a file path"),
        (["toy", "--out", "{tmp}/t.csv", "--steps", "x"], "toy", r"argument --steps: invalid int value"),
        (["toy", "--out", "{tmp}/t.csv", "--summary", "{tmp}/t.csv"], "toy",
         r"--summary must be another file than --out \(both '.*t.csv'\)"),
        (["aggregate", "--out", "{tmp}"], "aggregate", r"--out '.*' is a directory; give a file path"),
        (["aggregate", "--out", ""], "aggregate", r"--out is empty"),
        (["aggregate", "--out", "{tmp}/a.csv", "{tmp}/runs/*/seed*"], "aggregate",
         r"RUN '.*/runs/\*/seed\*' is a shell pattern that matched nothing \(no run directory\)$"),
        (["table", "--spec", "[1]"], "table", r"--spec must be a JSON object \(got list\)"),
        (["table", "--spec", '{"id": "t"}'], "table", r"--spec must be a resolved experiment"),
        (["table", "--spec", SPEC], "table", r"give run directories or --runs"),
        (["table", "--spec", SPEC, "--md", "{tmp}/t.md", "{tmp}/run"], "table",
         r"RUN '.*run' is not a run of experiment 't' \(nor is any RUN given\)"),
        (["table", "--spec", SPEC, "--runs", "{tmp}/no.csv"], "table",
         r"--runs '.*no.csv' does not exist"),
        (["table", "--spec", SPEC, "--runs", "{tmp}/norun.csv"], "table",
         r"--runs '.*' has no 'run' column"),
        (["table", "--spec", SPEC, "--runs", "{tmp}/empty.csv"], "table",
         r"--runs '.*' is not a CSV table"),
        (["scorecard", "--specs", "3", "--runs", "{tmp}/norun.csv"], "scorecard", r"--specs must be a JSON"),
        (["scorecard", "--specs", '{"a": 1}', "--runs", "{tmp}/norun.csv"], "scorecard",
         r"--specs must map experiment ids"),
        (["scorecard", "--specs", "{}", "--runs", "{tmp}/norun.csv"], "scorecard", r"has no 'run' column"),
        (["table", "--spec", SPEC.replace('"grid": {}, ', "")], "table",
         r"--spec is not a resolved experiment: \(top level\): 'grid' is a required property"),
        (["table", "--spec", SPEC.replace('"hparams": {}, ', ""), "--runs", "{tmp}/runs.csv"], "table",
         r"--spec is not a resolved experiment: arms.0: 'hparams' is a required property$"),
        (["table", "--spec", SPEC.replace(', "run": {}}', "}"), "--runs", "{tmp}/runs.csv"], "table",
         r"--spec is not a resolved experiment: arms.0: 'run' is a required property$"),
        (["table", "--spec", re.sub(r'"arms": \[.*?\]', '"arms": ["sam"]', SPEC), "--runs", "{tmp}/runs.csv"],
         "table", r"--spec is not a resolved experiment: arms.0: 'sam' is not of type 'object'$"),
        (["table", "--spec", SPEC.replace('"test_acc"', '"accuracy"'), "--runs", "{tmp}/runs.csv"], "table",
         r"experiment 't': unknown metric 'accuracy'; choose one of: test_acc, "),
        (["table", "--spec", SPEC.replace('"metric"]', '"metric"], "average_column": "avg"'), "--runs",
          "{tmp}/runs.csv"], "table", r"experiment 't': unknown metric 'avg'; choose one of: test_acc, "),
        (["table", "--spec", SPEC.replace('"overrides"', '"needs": "x", "overrides"'), "--runs",
          "{tmp}/runs.csv"], "table", r"--spec is not a resolved experiment: needs: 'x' is not of type"),
        (["figure", "--spec", FIG_SPEC, "--pdf", "{tmp}/f.pdf", "--png", "{tmp}/f.png", "--data",
          "{tmp}/runs.csv"], "figure",
         r"experiment 't': figure facet 'wd' is not a grid axis; grid axes: lr$"),
        (["table", "--spec", '{"id": "t", "kind": "table", "title": "T"}'], "table",
         r"--spec is not a resolved experiment: \(top level\): 'table' is a required property"),
        (["table", "--spec", SPEC, "--config", "configs/smoke.yaml", "--experiment", "table1"], "table",
         r"give --spec, or --config and --experiment, not both"),
        ([*TOY[:-1], "{tmp}/f.pdf"], "figure",
         r"--pdf and --png name the same file '.*f.pdf'; give each its own"),
        (["aggregate", "--out", "{tmp}/a.csv", "--epochs-out", "{tmp}/./a.csv"], "aggregate",
         r"--out and --epochs-out name the same file"),
        ([*TOY, "--data", "{tmp}/empty.csv"], "figure", r"--data '.*empty.csv' is not a CSV table"),
        ([*TOY, "--data", "{tmp}/norun.csv"], "figure",
         r"--data '.*norun.csv' has no 'method' column; give the CSV of python -m sampa toy --out$"),
        (["scorecard", "--specs", "{}", "--runs", "{tmp}/runs.csv", "--toy", "{tmp}/empty.csv"], "scorecard",
         r"--toy '.*empty.csv' is not a CSV table"),
        (["scorecard", "--specs", "{}", "--runs", "{tmp}/runs.csv", "--toy", "{tmp}/norun.csv"], "scorecard",
         r"--toy '.*norun.csv' has no 'method' column; give the CSV of python -m sampa toy --summary$"),
        (["scorecard", "--specs", '{"t": {"kind": "table"}}', "--runs", "{tmp}/runs.csv"], "scorecard",
         r"--specs 't' is not a resolved experiment: \(top level\): 'table' is a required property"),
    ],
)  # fmt: skip
def test_report_commands_bad_input(tmp_path, capsys, argv, command, message):
    (tmp_path / "norun.csv").write_text("a,b\n1,2\n")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "runs.csv").write_text("run,status\n")
    before = sorted(tmp_path.iterdir())
    err = one_line_error([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys, command)
    assert re.search(message, err), err
    assert sorted(tmp_path.iterdir()) == before


def test_validation_is_driven_by_field_types():
    """Every bool, int and float field rejects a value of the wrong type, with no special case."""
    for name, f in FIELDS.items():
        default = getattr(RunConfig(), name)
        if isinstance(default, bool):
            bad = "true"
        elif isinstance(default, int | float):
            bad = "1"
        else:
            continue
        with pytest.raises(ConfigError, match=rf"^{name} must be"):
            validate(config_from_dict({name: bad}))
        assert f.metadata["help"]


IGNORED = [
    ({"base_optimizer": "adamw", "momentum": 0.5}, r"^momentum 0.5 is not read by base_optimizer 'adamw'"),
    ({"betas": (0.8, 0.99)}, r"^betas \[0.8, 0.99\] is not read by base_optimizer 'sgd'"),
    ({"dataset": "glue-stsb", "model": "bert-tiny", "label_smoothing": 0.3}, r"^label_smoothing 0.3 is not"),
    ({"dataset": "synthetic-text", "model": "bert-tiny", "channels_last": True}, r"^channels_last true is"),
]


@pytest.mark.parametrize(("changes", "message"), IGNORED)
def test_the_api_refuses_a_setting_the_run_ignores_before_any_work(tmp_path, changes, message):
    """train() validates first: a value the run would silently ignore is a ConfigError, nothing written."""
    from sampa.train import train

    cfg = RunConfig(**{"model": "tinycnn", "dataset": "synthetic", "device": "cpu", **changes})
    with pytest.raises(ConfigError, match=message):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "changes",
    [
        {"base_optimizer": "adamw", "momentum": 0.9, "nesterov": False, "betas": [0.5, 0.6]},
        {"betas": [0.9, 0.999], "momentum": 0.0, "nesterov": True, "channels_last": True},
        {"dataset": "glue-stsb", "model": "bert-tiny", "label_smoothing": 0.0, "channels_last": False},
        {"dataset": "glue-stsb", "model": "bert-tiny", "label_smoothing": 0.1},
        {"dataset": "glue-rte", "model": "bert-tiny", "label_smoothing": 0.3, "base_optimizer": "adamw"},
    ],
)
def test_defaults_and_settings_the_run_reads_are_accepted(changes):
    """Only a value the run ignores is refused: the defaults (written out or not, a pair as a list too),
    STS-B's label_smoothing 0 (no smoothing: what its squared error does) and every read setting pass."""
    validate(config_from_dict({"model": "tinycnn", "dataset": "synthetic", "device": "cpu", **changes}))


def test_settings_mapping_round_trip(tmp_path):
    """A valid config survives JSON (the workflow's --settings) unchanged."""
    cfg = RunConfig(
        model="tinycnn", dataset="synthetic", device="cpu", base_optimizer="adamw", betas=(0.8, 0.99)
    )
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == validate(cfg)


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        ([*TRAIN, "--out", "{dir}/run"], "train"),
        (["aggregate", "--out", "{dir}/runs.csv"], "aggregate"),
        (["plan", "--config", str(ROOT / "configs" / "smoke.yaml"), "--out", "{dir}/plan.csv"], "plan"),
    ],
)
def test_a_failed_write_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch, argv, command):
    """A write that fails (here: a full disk) ends the training and report commands alike: one line
    naming the path and the cause, exit status 1 (bad input is 2)."""

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io.os, "fsync", full_disk)
    assert main([a.replace("{dir}", str(tmp_path)) for a in argv]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"sampa {command}: error: {tmp_path}"), err
    assert err.endswith("No space left on device"), err


def test_a_write_below_a_file_says_not_a_directory(tmp_path):
    """Not mkdir's "File exists" (the file is there, but it is not a folder)."""
    file = tmp_path / "file"
    file.write_text("")
    with pytest.raises(NotADirectoryError) as err:
        io.write_text(file / "out.csv", "a")
    assert (err.value.filename, err.value.strerror) == (str(file), "Not a directory")
    assert file.read_text() == ""


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        ([*TRAIN, "--out", "{file}"], "train"),
        ([*TRAIN, "--out", "{file}/run"], "train"),
        (["aggregate", "--out", "{file}/runs.csv"], "aggregate"),
        (["aggregate", "--out", "{file}/deeper/runs.csv"], "aggregate"),
        (["plan", "--config", str(ROOT / "configs" / "smoke.yaml"), "--out", "{file}/plan.csv"], "plan"),
        (["toy", "--out", "{file}/toy.csv"], "toy"),
        (["toy", "--out", "{dir}/toy.csv", "--summary", "{file}/summary.csv"], "toy"),
        (["aggregate", "--out", "{dir}/runs.csv", "{file}"], "aggregate"),
        (["table", "--spec", SPEC, "--md", "{dir}/t.md", "{file}"], "table"),
    ],
)
def test_an_output_under_a_file_or_a_run_that_is_a_file_is_bad_input(tmp_path, capsys, argv, command):
    """Found before any work (the plan was printed, the toy run, before the write failed, with
    mkdir's misleading "File exists")."""
    file = tmp_path / "file"
    file.write_text("x")
    argv = [a.replace("{file}", str(file)).replace("{dir}", str(tmp_path)) for a in argv]
    err = one_line_error(argv, capsys, command)
    assert f"'{file}'" in err and "a file" in err, err
    assert capsys.readouterr().out == "" and sorted(tmp_path.iterdir()) == [file]


def test_a_reader_that_leaves_the_pipe_ends_the_command_quietly(tmp_path):
    """`python -m sampa plan ... | head -1`: stdout closed before the output is written, no error line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sampa", "plan", "--config", str(ROOT / "configs" / "smoke.yaml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
    )
    proc.stdout.close()  # the reader is gone before the plan is printed
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert err == ""
