"""Command line: ``python -m sampa train ...`` (one run), ``python -m sampa toy ...`` (Figure 1) and the
presentation commands ``plan|aggregate|table|figure`` (:mod:`sampa.report.commands`).

Bad input exits with status 2 and one line on stderr, before any data is loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from sampa import io
from sampa.config import (
    BASE_OPTIMIZERS,
    SCHEDULES,
    ConfigError,
    RunConfig,
    config_from_dict,
    load_config_file,
    validate,
)
from sampa.doctor import add_parser as add_doctor_parser
from sampa.report.commands import add_parsers as add_report_parsers

#: command-line flag -> RunConfig field, for the flags that map one to one
_FIELD_FLAGS = {
    "model": str,
    "dataset": str,
    "optimizer": str,
    "base_optimizer": str,
    "lr": float,
    "momentum": float,
    "weight_decay": float,
    "batch_size": int,
    "epochs": int,
    "schedule": str,
    "label_smoothing": float,
    "label_noise": float,
    "cutout": int,
    "val_fraction": float,
    "seed": int,
    "device": str,
    "devices": int,
    "backend": str,
    "amp": str,
    "optimizer_impl": str,
    "compile": str,
    "dist_timeout_s": float,
    "data_root": str,
    "synthetic_train_size": int,
    "synthetic_test_size": int,
    "eval_batch_size": int,
    "threads": int,
}

#: on/off flags that set a RunConfig field to true (fast path)
_BOOL_FLAGS = ("channels_last", "cudnn_benchmark", "flat_buffers")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as err:
        print(f"sampa {args.command}: error: {err}", file=sys.stderr)
        return 2


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
    for name, kind in _FIELD_FLAGS.items():
        extra: dict[str, Any] = {}
        if name == "base_optimizer":
            extra["choices"] = BASE_OPTIMIZERS
        if name == "schedule":
            extra["choices"] = SCHEDULES
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None, **extra)
    p.add_argument("--rho", type=float, help="perturbation radius (method hyperparameter)")
    p.add_argument("--lam", type=float, help="SAMPa interpolation lambda in [0, 1]")
    p.add_argument(
        "--hp",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any method hyperparameter, e.g. --hp k=5 (repeatable)",
    )
    p.add_argument(
        "--no-download",
        dest="download",
        action="store_false",
        default=None,
        help="never try to download CIFAR",
    )
    p.add_argument("--test-every-epoch", dest="test_every_epoch", action="store_true", default=None)
    for flag in _BOOL_FLAGS:
        p.add_argument(f"--{flag.replace('_', '-')}", dest=flag, action="store_true", default=None)
    p.set_defaults(handler=_train)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Config file values, overridden by flags, validated."""
    values: dict[str, Any] = load_config_file(args.config) if args.config else {}
    values |= _parse_settings(args.settings)
    for name in [*_FIELD_FLAGS, *_BOOL_FLAGS, "download", "test_every_epoch"]:
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    hparams = dict(values.get("hparams") or {})
    hparams |= _parse_hparams(args.hp)
    for key in ("rho", "lam"):
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
    if args.gpus is None:
        return
    if 0 < args.gpus < cfg.devices:  # e.g. Snakemake capped the job's gpu resource at --resources gpu=1
        raise ConfigError(f"this run needs {cfg.devices} GPUs but was given {args.gpus} (--gpus)")
    from sampa.gpus import GpuError, claim

    try:
        claim(args.gpus, directory=args.gpu_lock_dir)
    except GpuError as err:
        raise ConfigError(str(err)) from None


def _parse_hparams(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--hp expects KEY=VALUE (got {item!r})")
        out[key.strip()] = yaml.safe_load(raw)
    return out


def _train(args: argparse.Namespace) -> int:
    from sampa.data import DataUnavailableError
    from sampa.train import RunError, train

    cfg = config_from_args(args)
    _claim_gpus(args, cfg)
    try:
        metrics = _train_pair(cfg, args.out) if cfg.devices > 1 else train(cfg, args.out)
    except DataUnavailableError as err:
        print(f"sampa train: error: {err}", file=sys.stderr)
        return 2
    except RunError as err:
        print(f"sampa train: error: {err}", file=sys.stderr)
        return 1
    if metrics is not None:
        keys = ("status", "test_acc", "best_val_acc", "best_epoch", "final_test_acc")
        print(json.dumps({k: metrics.get(k) for k in keys} | {"out": str(args.out)}))
    return 0


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
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--lr", type=float, default=d.lr, help="eta_0; eta_t = eta_0/(1+t)^decay")
    p.add_argument("--decay", type=float, default=d.decay)
    p.add_argument("--rho", type=float, default=d.rho)
    p.add_argument("--lams", default=",".join(f"{x:g}" for x in d.lams), help="comma-separated lambdas")
    p.add_argument("--seed", type=int, default=d.seed)
    p.set_defaults(handler=_toy)


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
    try:
        lams = tuple(float(x) for x in args.lams.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--lams must be comma-separated numbers (got {args.lams!r})") from None
    if args.steps < 2:
        raise ConfigError(f"--steps must be an integer >= 2 (got {args.steps})")
    if args.lr <= 0:
        raise ConfigError(f"--lr must be > 0 (got {args.lr})")
    if args.rho < 0:
        raise ConfigError(f"--rho must be >= 0 (got {args.rho})")
    if any(not 0 <= lam <= 1 for lam in lams):
        raise ConfigError(f"--lams values must be in [0, 1] (got {args.lams!r})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    return cls(lr=args.lr, decay=args.decay, rho=args.rho, steps=args.steps, lams=lams, seed=args.seed)


# ----------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sampa", description="sampa-bench: SAM / SAMPa benchmark suite")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_parser(sub)
    _add_toy_parser(sub)
    add_report_parsers(sub)  # plan, aggregate, table, figure
    add_doctor_parser(sub)
    return parser


if __name__ == "__main__":
    sys.exit(main())
