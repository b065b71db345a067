"""One training run's configuration, its defaults (the SAMPa paper's protocol) and its validation.

Validation is cheap (no I/O, no data) and runs before anything is loaded; every error is one line
naming the bad value and the valid choices (:class:`ConfigError`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sampa import io
from sampa.backends.fastpath import AMP_MODES, COMPILE_MODES, OPTIMIZER_IMPLS, FastPath
from sampa.data import DATASET_NAMES, check_dataset_args
from sampa.models import MODEL_NAMES
from sampa.optim import HyperparameterError, check_method
from sampa.optim.checks import check_int, check_range

BASE_OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "cosine_iter", "constant")
BACKENDS = ("single", "fused")  # one device: reference, or independent gradients in one fused pass
CIFAR_TRAIN_SIZE = 50_000


class ConfigError(ValueError):
    """Invalid run configuration (message: one line)."""


@dataclass
class RunConfig:
    """Everything that defines a run. Defaults follow the SAMPa paper, Section 5.1."""

    model: str = "resnet56"
    dataset: str = "cifar10"
    optimizer: str = "sgd"  # method name, see sampa.optim.METHOD_NAMES
    hparams: dict[str, Any] = field(default_factory=dict)  # method hyperparameters (rho, lam, ...)
    base_optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.1  # peak learning rate
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4  # coupled L2 for SGD, decoupled for AdamW
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    batch_size: int = 128
    epochs: int = 200
    schedule: str = "cosine"  # per-epoch cosine to 0 (official code); cosine_iter: per step; constant
    label_smoothing: float = 0.1  # 1-s on the true class, s/(C-1) on the others
    label_noise: float = 0.0  # symmetric noise rate on training labels
    cutout: int = 0  # Cutout patch size (0 = off; the official code uses 16)
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    devices: int = 1  # 1, or 2k for the pair backend (SAMPa: two groups of k; others: data parallel)
    backend: str = "single"  # one device: single (reference) | fused (independent gradients in one pass)
    # fast path (sampa.backends.fastpath); all off = the fp32 eager reference
    amp: str = "off"  # off | bf16 (forward passes under bf16 autocast, loss and updates in fp32)
    channels_last: bool = False  # model and batches in channels_last memory format
    cudnn_benchmark: bool = False  # torch.backends.cudnn.benchmark during the run
    optimizer_impl: str = "default"  # base optimizer kernels: default (torch's choice) | foreach | fused
    compile: str = "off"  # torch.compile: off | model (forward/backward) | step (the whole method step)
    flat_buffers: bool = False  # parameters, points and gradients as one contiguous buffer each
    dist_timeout_s: float = 300.0  # two devices: a dead or hung rank stops the run after this long
    data_root: str | None = None  # default: $SAMPA_DATA, then ./data
    download: bool = True
    synthetic_train_size: int = 5000
    synthetic_test_size: int = 1000
    eval_batch_size: int = 1000
    threads: int = 0  # torch CPU threads (0 = torch's default)
    test_every_epoch: bool = False  # also evaluate the test set each epoch (for curves)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(RunConfig))


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    """Build a config from a mapping (e.g. a YAML file); unknown keys are an error."""
    unknown = sorted(set(values) - set(FIELD_NAMES))
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r}; valid keys: {', '.join(FIELD_NAMES)}")
    values = dict(values)
    if "betas" in values:
        values["betas"] = tuple(values["betas"])
    if values.get("hparams") is None:
        values["hparams"] = {}
    return RunConfig(**values)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (or JSON) mapping of run settings."""
    return io.read_yaml_mapping(path, "config file", ConfigError)


def train_set_size(cfg: RunConfig) -> int:
    """Number of training samples after the train/validation split (no data is read)."""
    total = cfg.synthetic_train_size if cfg.dataset.startswith("synthetic") else CIFAR_TRAIN_SIZE
    return total - round(total * cfg.val_fraction)


def validate(cfg: RunConfig) -> RunConfig:
    """Check every field; return the config unchanged or raise :class:`ConfigError`."""
    _choice("model", cfg.model, MODEL_NAMES)
    _choice("dataset", cfg.dataset, DATASET_NAMES)
    _choice("base_optimizer", cfg.base_optimizer, BASE_OPTIMIZERS)
    _choice("schedule", cfg.schedule, SCHEDULES)
    try:
        check_method(cfg.optimizer, cfg.hparams)
        check_dataset_args(cfg.dataset, cfg.val_fraction, cfg.label_noise)
    except (HyperparameterError, ValueError) as err:
        raise ConfigError(str(err)) from None
    _number("lr", cfg.lr, low=0.0, low_open=True)
    _number("momentum", cfg.momentum, low=0.0, high=1.0, high_open=True)
    _number("weight_decay", cfg.weight_decay, low=0.0)
    _number("label_smoothing", cfg.label_smoothing, low=0.0, high=1.0, high_open=True)
    for i, beta in enumerate(cfg.betas):
        _number(f"betas[{i}]", beta, low=0.0, high=1.0, high_open=True)
    _integer("epochs", cfg.epochs, low=1)
    _integer("batch_size", cfg.batch_size, low=1)
    _integer("cutout", cfg.cutout, low=0)
    _integer("seed", cfg.seed, low=0)
    _integer("synthetic_train_size", cfg.synthetic_train_size, low=10)
    _integer("synthetic_test_size", cfg.synthetic_test_size, low=1)
    _integer("eval_batch_size", cfg.eval_batch_size, low=1)
    _integer("threads", cfg.threads, low=0)
    if type(cfg.devices) is not int or cfg.devices < 1 or (cfg.devices % 2 and cfg.devices != 1):
        raise ConfigError(f"devices must be 1 or an even number (2, 4, 8, ...) (got {cfg.devices!r})")
    _check_fast_path(cfg)
    _number("dist_timeout_s", cfg.dist_timeout_s, low=0.0, low_open=True)
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.device):
        raise ConfigError(f"device must be one of auto, cpu, cuda, cuda:N (got {cfg.device!r})")
    n_train = train_set_size(cfg)
    if cfg.batch_size > n_train:
        raise ConfigError(
            f"batch_size {cfg.batch_size} is larger than the training set "
            f"({n_train} samples of {cfg.dataset})"
        )
    return cfg


def _check_fast_path(cfg: RunConfig) -> None:
    _choice("backend", cfg.backend, BACKENDS)
    if cfg.backend == "fused" and cfg.devices != 1:
        raise ConfigError(f"backend 'fused' runs on one device; devices must be 1 (got {cfg.devices})")
    _choice("amp", cfg.amp, AMP_MODES)
    _choice("compile", cfg.compile, COMPILE_MODES)
    if cfg.compile == "step" and cfg.devices != 1:
        raise ConfigError(f"compile 'step' runs on one device; devices must be 1 (got {cfg.devices})")
    _choice("optimizer_impl", cfg.optimizer_impl, OPTIMIZER_IMPLS)
    for name in ("channels_last", "cudnn_benchmark", "flat_buffers"):
        if not isinstance(getattr(cfg, name), bool):
            raise ConfigError(f"{name} must be true or false (got {getattr(cfg, name)!r})")
    try:
        FastPath(compile=cfg.compile)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(map(str, choices))}")


def _number(name: str, value: Any, **bounds: Any) -> None:
    try:
        check_range(name, value, **bounds)
    except HyperparameterError as err:
        raise ConfigError(str(err)) from None


def _integer(name: str, value: Any, *, low: int) -> None:
    try:
        check_int(name, value, low)
    except HyperparameterError as err:
        raise ConfigError(str(err)) from None
