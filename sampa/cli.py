"""Command line: ``python -m sampa train ...`` (one run), ``python -m sampa toy ...`` (Figure 1) and the
presentation commands ``plan|aggregate|table|figure`` (:mod:`sampa.report.commands`).

Bad input exits with status 2 and one line on stderr, before any data is loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from sampa import io
from sampa.config import (
    FIELD_TYPES,
    FIELDS,
    ConfigError,
    RunConfig,
    check_value,
    config_from_dict,
    load_config_file,
    valid_values,
    validate,
)
from sampa.doctor import add_parser as add_doctor_parser
from sampa.ranges import RHO, SAMPA_LAM
from sampa.report.commands import OneLineParser
from sampa.report.commands import add_parsers as add_report_parsers

#: RunConfig fields with a command-line flag (``--name-with-dashes``), from the fields' metadata
FLAG_FIELDS = tuple(name for name, f in FIELDS.items() if f.metadata["flag"])
#: the method hyperparameters with a flag of their own: help and the range the methods check
#: (:mod:`sampa.ranges`), as a RunConfig field's metadata; their defaults are each method's
HPARAM_FLAGS = {
    "rho": {"help": "perturbation radius, a method hyperparameter", **RHO},
    "lam": {"help": "SAMPa's interpolation lambda, a method hyperparameter", **SAMPA_LAM},
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_command(argv)
    return io.command_status(args.command, lambda: args.handler(args), _bad_input)


def _bad_input() -> tuple[type[Exception], ...]:
    """Errors that mean bad input, exit 2 (imported on an error only: the data module imports torch)."""
    from sampa.data import DataUnavailableError
    from sampa.extras import MissingExtraError

    return (ConfigError, DataUnavailableError, MissingExtraError)


# ----------------------------------------------------------------------------------------------
# train


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train one run into an output directory",
        description="Train one run. Flags override values from --config.",
    )
    p.add_argument("--config", help="YAML file with run settings (keys as in sampa.config.RunConfig)")
    p.add_argument(
        "--settings", help="run settings as a JSON mapping, applied over --config (the workflow's way)"
    )
    p.add_argument("--out", required=True, help="run directory (created; an interrupted run resumes there)")
    p.add_argument(
        "--gpus",
        type=int,
        help="claim this many free GPUs (lock files, CUDA_VISIBLE_DEVICES; 0 hides every GPU): sampa.gpus",
    )
    p.add_argument("--gpu-lock-dir", help="lock directory for --gpus (default $SAMPA_GPU_LOCK_DIR or /tmp)")
    for name in FLAG_FIELDS:
        _add_field_flag(p, name)
    for name, meta in HPARAM_FLAGS.items():
        help_text = _help(meta, valid_values(float, meta), "the method's")
        p.add_argument(f"--{name}", type=float, help=help_text)
    p.add_argument(
        "--hp",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any method hyperparameter, e.g. --hp k=5 (repeatable)",
    )
    p.set_defaults(handler=_train)


def _add_field_flag(p: argparse.ArgumentParser, name: str) -> None:
    """One flag per RunConfig field: ``--x/--no-x`` for booleans, two numbers for a pair, else a value."""
    kind, meta = FIELD_TYPES[name], FIELDS[name].metadata
    flag = f"--{name.replace('_', '-')}"
    default = getattr(RunConfig(), name)
    help_text = _help(meta, valid_values(kind, meta), default)
    if kind is bool:
        p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
    elif kind in (int, float, int | None, float | None):
        integer = kind in (int, int | None)
        p.add_argument(flag, dest=name, type=int if integer else float, default=None, help=help_text)
    elif kind in (str, str | None):
        p.add_argument(flag, dest=name, default=None, help=help_text)
    else:  # a pair of numbers (betas)
        p.add_argument(
            flag, dest=name, type=float, nargs=2, default=None, metavar=("B1", "B2"), help=help_text
        )


def _help(meta: Any, valid: str, default: Any) -> str:
    """A flag's help: its text, then what it accepts and its default (unless the text says it)."""
    facts = [valid] if valid else []
    if "(default:" not in meta["help"]:
        facts.append(f"default: {default}")
    text = f"{meta['help']} ({'; '.join(facts)})" if facts else meta["help"]
    return text.replace("%", "%%")  # argparse formats help with %


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Config file values, overridden by flags, validated."""
    if not args.out.strip() or "\0" in args.out:
        raise ConfigError(f"--out must name the run's directory (got {args.out!r})")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out!r} is a file; give the run's directory")
    io.check_not_under_file(args.out, "--out", ConfigError)
    values: dict[str, Any] = load_config_file(args.config) if args.config is not None else {}
    values |= _parse_settings(args.settings)
    for name in FLAG_FIELDS:
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    hparams = values.get("hparams") or {}
    check_value("hparams", hparams, FIELD_TYPES["hparams"], FIELDS["hparams"].metadata)
    hparams = dict(hparams)
    hparams |= _parse_hparams(args.hp)
    for key in HPARAM_FLAGS:
        if getattr(args, key) is not None:
            hparams[key] = getattr(args, key)
    values["hparams"] = hparams
    return validate(config_from_dict(values))


def _parse_settings(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--settings is not valid JSON: {err.msg} (column {err.colno})") from None
    if not isinstance(settings, dict):
        raise ConfigError("--settings must be a JSON mapping of run settings")
    return settings


def _claim_gpus(args: argparse.Namespace, cfg: RunConfig) -> None:
    """Give this process its GPUs before anything touches CUDA (see sampa.gpus)."""
    if args.gpu_lock_dir is not None and args.gpus is None:
        raise ConfigError(f"--gpu-lock-dir {args.gpu_lock_dir!r} needs --gpus (it holds the GPU locks)")
    if args.gpus is None or _started_by_launcher(cfg):
        return
    if 0 < args.gpus < cfg.devices:  # e.g. Snakemake capped the job's gpu resource at --resources gpu=1
        raise ConfigError(f"this run needs {cfg.devices} GPUs but was given {args.gpus} (--gpus)")
    from sampa.gpus import GpuError, claim

    try:
        claim(args.gpus, directory=args.gpu_lock_dir)
    except GpuError as err:
        raise ConfigError(str(err)) from None


def _started_by_launcher(cfg: RunConfig) -> bool:
    """This process is one rank of a group that torchrun or srun started (the launcher bound each rank's
    GPU, so ``--gpus`` claims nothing; one task per rank of a multi-node workflow job)."""
    if cfg.devices == 1:
        return False
    from sampa.launch import external_launcher

    return external_launcher(os.environ, cfg.devices) is not None


def _parse_hparams(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--hp expects KEY=VALUE (got {item!r})")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"--hp {item!r}: the value is not valid YAML ({err.problem})") from None
    return out


def _train(args: argparse.Namespace) -> int:
    from sampa.train import RunError, train

    cfg = config_from_args(args)
    _check_requirements(cfg)
    _claim_gpus(args, cfg)
    try:  # missing data or extras: bad input (_bad_input)
        metrics = _train_pair(cfg, args.out) if cfg.devices > 1 else train(cfg, args.out)
    except RunError as err:
        print(f"sampa train: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        raise io.Interrupted(_rerun_hint(args.out)) from None
    if metrics is not None:
        keys = ("status", "test_acc", "test_task_score", "best_val_acc", "best_epoch", "final_test_acc")
        print(json.dumps({k: metrics.get(k) for k in keys} | {"out": str(args.out)}))
    return 0


def _rerun_hint(out: str) -> str:
    """What the same command does after Ctrl-C, from the run directory: report the finished run,
    resume after the last finished epoch (a checkpoint), or start again (no epoch finished)."""
    from sampa.rundir import RunDir

    run = RunDir(out)
    try:
        if run.metrics.exists():  # written atomically, last: the run had finished
            return "the run had finished (its metrics.json is written); the same command prints its results"
        if not run.checkpoint.exists():
            return "no epoch had finished, so the same command starts the run again"
    except OSError:  # cannot tell (e.g. no permission to look)
        pass
    return io.RESUME_HINTS["train"]


def _check_requirements(cfg: RunConfig) -> None:
    """Data, weights and extras the run needs, checked before its directory is written (one line)."""
    from sampa.data.cifar import CIFAR_SOURCES, DataUnavailableError, check_present, resolve_root
    from sampa.requirements import missing

    needs = missing(cfg.dataset, cfg.model, cfg.data_root)
    if needs:
        raise ConfigError("; ".join(needs))
    root = resolve_root(cfg.data_root)
    if cfg.dataset in CIFAR_SOURCES and io.file_above(root / "x") is not None:  # made if absent
        where = "data_root" if cfg.data_root is not None else "the data root ($SAMPA_DATA or ./data)"
        raise ConfigError(f"{where} {str(root)!r} is not a folder (a file is in its place); give a folder")
    if cfg.dataset in CIFAR_SOURCES and not cfg.download:  # with download, only trying tells
        try:
            check_present(cfg.dataset, root)
        except DataUnavailableError as err:
            raise ConfigError(str(err)) from None


def _train_pair(cfg: RunConfig, out: str) -> dict[str, Any] | None:
    from sampa.launch import launch

    return launch(cfg, out)


# ----------------------------------------------------------------------------------------------
# toy


def _add_toy_parser(sub: argparse._SubParsersAction) -> None:
    from sampa.toy import ToySetup

    d = ToySetup()
    p = sub.add_parser(
        "toy",
        help="Figure 1: SAM, RandSAM, OptSAM, SAMPa-lambda on f(x)=||x||^2",
        description="Run the paper's Figure 1 experiment and write trajectories as CSV.",
    )
    p.add_argument("--out", required=True, help="CSV file for the trajectories")
    p.add_argument("--summary", help="CSV file for the per-method summary (default: printed only)")
    for name in ("steps", "lr", "decay", "rho", "seed"):
        default = getattr(d, name)
        p.add_argument(f"--{name}", type=type(default), default=default, help=_toy_help(name, default))
    lams = ",".join(f"{x:g}" for x in d.lams)
    p.add_argument("--lams", default=lams, help="comma-separated " + _toy_help("lams", lams))
    p.set_defaults(handler=_toy)


def _toy_help(name: str, default: Any) -> str:
    """Help of a toy flag from :class:`sampa.toy.ToySetup`'s field metadata."""
    import dataclasses
    import typing

    from sampa.toy import ToySetup

    field = next(f for f in dataclasses.fields(ToySetup) if f.name == name)
    return _help(field.metadata, valid_values(typing.get_type_hints(ToySetup)[name], field.metadata), default)


def _toy(args: argparse.Namespace) -> int:
    from sampa.toy import ToySetup, run, to_csv

    setup = _toy_setup(args, ToySetup)
    rows, summary = run(setup)
    io.write_text(args.out, to_csv(rows))
    if args.summary:
        io.write_text(args.summary, to_csv(summary))
    for s in summary:
        verdict = "converged" if s["converged"] else "NOT converged"
        print(f"{s['method']:>12}: tail-mean distance {s['tail_mean_distance']:.2e} -> {verdict}")
    return 0


def _toy_setup(args: argparse.Namespace, cls: type) -> Any:
    """The toy's settings from the flags, every value checked before anything is written."""
    from sampa.toy import check_setup

    try:
        lams = tuple(float(x) for x in args.lams.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--lams must be comma-separated numbers (got {args.lams!r})") from None
    for flag in ("out", "summary"):
        path = getattr(args, flag)
        if path is not None and (not path.strip() or "\0" in path or Path(path).is_dir()):
            raise ConfigError(f"--{flag} must be a file path (got {path!r})")
        if path is not None:
            io.check_not_under_file(path, f"--{flag}", ConfigError)
    if args.summary is not None and Path(args.summary).resolve() == Path(args.out).resolve():
        raise ConfigError(f"--summary must be another file than --out (both {args.out!r})")
    setup = cls(lr=args.lr, decay=args.decay, rho=args.rho, steps=args.steps, lams=lams, seed=args.seed)
    return check_setup(setup, prefix="--")


# ----------------------------------------------------------------------------------------------


def _parser() -> OneLineParser:
    parser = OneLineParser(prog="sampa", description="sampa-bench: SAM / SAMPa benchmark suite")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_parser(sub)
    _add_toy_parser(sub)
    add_report_parsers(sub)  # plan, aggregate, table, figure
    add_doctor_parser(sub)
    return parser


if __name__ == "__main__":
    sys.exit(main())
