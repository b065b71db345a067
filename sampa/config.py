"""One training run's configuration, its defaults (the SAMPa paper's protocol) and its validation.

Each field of :class:`RunConfig` carries its facts as metadata (:func:`setting`): help text, valid
range or choices, whether it is a *machine* setting (does not change results). From them come the
command-line flags (``sampa.cli``), the machine keys (``MACHINE_KEYS``) and :func:`validate`: one
type-driven check per field (booleans are booleans, numbers are finite and in range, paths are
non-empty strings), then the checks that relate fields. Validation is cheap (no I/O, no data) and
runs before anything is written; every error is one line naming the key, the value and what is
valid (:class:`ConfigError`). Importing this module does not import torch (the registries of
models, datasets and methods are read on first validation).
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sampa import io
from sampa.glue_tasks import GLUE_TASKS, TEXT_DATASETS
from sampa.ranges import interval

BASE_OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "cosine_iter", "constant", "linear")
BACKENDS = ("single", "fused")  # one device: reference, or independent gradients in one fused pass
CIFAR_TRAIN_SIZE = 50_000
SEED_LIMIT = 2**63  # seeds must fit torch's generators and the derived 63-bit streams
DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"


class ConfigError(ValueError):
    """Invalid run configuration (message: one line)."""

    plain_message = True  # a launcher reports it by its message (sampa.rundir.one_line)


def setting(
    default: Any,
    help: str,
    *,
    choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    machine: bool = False,
    flag: bool = True,
) -> Any:
    """A :class:`RunConfig` field with its facts: ``choices`` (or a function returning them, for
    registries), a ``low``/``high`` range (open ends with ``*_open``), ``machine`` (does not change
    results: set per machine, may differ on restart) and ``flag`` (exposed as a CLI flag)."""
    meta = {
        "help": help,
        "choices": choices,
        "low": low,
        "high": high,
        "low_open": low_open,
        "high_open": high_open,
        "machine": machine,
        "flag": flag,
    }
    if isinstance(default, dict | list):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _models() -> tuple[str, ...]:
    from sampa.models import MODEL_NAMES
    from sampa.models.pretrained import SOURCE_MODEL_NAMES

    return tuple(MODEL_NAMES) + SOURCE_MODEL_NAMES


def _datasets() -> tuple[str, ...]:
    from sampa.data import DATASET_NAMES
    from sampa.data.sources import SOURCE_NAMES

    return tuple(DATASET_NAMES) + SOURCE_NAMES


def _methods() -> tuple[str, ...]:
    from sampa.optim import METHOD_NAMES

    return tuple(METHOD_NAMES)


def _fast_path_choices(name: str) -> Callable[[], tuple[str, ...]]:
    def choices() -> tuple[str, ...]:
        from sampa.backends import fastpath

        return getattr(fastpath, name)

    return choices


@dataclass
class RunConfig:
    """Everything that defines a run. Defaults follow the SAMPa paper, Section 5.1."""

    model: str = setting("resnet56", "network architecture", choices=_models)
    dataset: str = setting("cifar10", "dataset", choices=_datasets)
    optimizer: str = setting("sgd", "method (sampa.optim.METHOD_NAMES)", choices=_methods)
    hparams: dict[str, Any] = setting({}, "method hyperparameters (rho, lam, ...)", flag=False)  # noqa: RUF009
    base_optimizer: str = setting("sgd", "base optimizer", choices=BASE_OPTIMIZERS)
    lr: float = setting(0.1, "peak learning rate", low=0.0, low_open=True)
    momentum: float = setting(
        0.9, "SGD momentum (base optimizer sgd only)", low=0.0, high=1.0, high_open=True
    )
    weight_decay: float = setting(5e-4, "coupled L2 for SGD, decoupled for AdamW", low=0.0)
    nesterov: bool = setting(False, "Nesterov momentum (base optimizer sgd only)")
    betas: tuple[float, float] = setting(
        (0.9, 0.999),
        "AdamW betas (two numbers; base optimizer adamw only)",
        low=0.0,
        high=1.0,
        high_open=True,
    )
    batch_size: int = setting(128, "training batch size", low=1)
    epochs: int = setting(200, "training epochs", low=1)
    schedule: str = setting(
        "cosine",
        "per-epoch cosine to 0 (official code); cosine_iter: per step; constant; linear: per step, "
        "warm-up then decay to 0 (BERT fine-tuning)",
        choices=SCHEDULES,
    )
    warmup: float = setting(
        0.0, "linear schedule: fraction of all training steps spent warming up from 0 (0.1 = 10%)", low=0.0,
        high=1.0, high_open=True,
    )  # fmt: skip
    clip_norm: float | None = setting(
        None, "clip each update direction to this global norm (null = no clipping)", low=0.0, low_open=True
    )
    label_smoothing: float = setting(
        0.1, "1-s on the true class, s/(C-1) on the others (classification only: the regression task "
        "STS-B reads none, 0 is accepted)", low=0.0, high=1.0, high_open=True,
    )  # fmt: skip
    label_noise: float = setting(
        0.0,
        "symmetric label noise: fraction of training labels changed (0.4 = 40%); CIFAR and synthetic "
        "images only",
        low=0.0,
        high=1.0,
        high_open=True,
    )
    cutout: int = setting(
        0, "Cutout patch side in pixels, 0 = off (the official code uses 16); at most the image side: 32 on "
        "CIFAR and synthetic, the only datasets with Cutout", low=0,
    )  # fmt: skip
    val_fraction: float = setting(
        0.1, "fraction of training samples held out for validation (0.1 = 10%)", low=0.0, high=1.0,
        low_open=True, high_open=True,
    )  # fmt: skip
    seed: int = setting(0, "run seed (data order, initialisation, method randomness)", low=0,
                        high=SEED_LIMIT, high_open=True)  # fmt: skip
    device: str = setting("auto", "auto | cpu | cuda | cuda:N", machine=True)
    devices: int = setting(
        1, "1, or 2k for the pair backend (SAMPa: two groups of k; others: data parallel)", low=1
    )
    backend: str = setting(
        "single", "one device: single (reference) | fused (independent gradients in one pass)",
        choices=BACKENDS,
    )  # fmt: skip
    # fast path (sampa.backends.fastpath); all off = the fp32 eager reference
    amp: str = setting(
        "off", "bf16: forward passes under bf16 autocast, loss and updates in fp32",
        choices=_fast_path_choices("AMP_MODES"),
    )  # fmt: skip
    channels_last: bool = setting(
        False, "model and batches in channels_last memory format (image models only)"
    )
    cudnn_benchmark: bool = setting(False, "torch.backends.cudnn.benchmark during the run")
    optimizer_impl: str = setting(
        "default", "base optimizer kernels (default = torch's choice)",
        choices=_fast_path_choices("OPTIMIZER_IMPLS"),
    )  # fmt: skip
    compile: str = setting(
        "off", "torch.compile: model (forward/backward) | step (the whole method step)",
        choices=_fast_path_choices("COMPILE_MODES"),
    )  # fmt: skip
    flat_buffers: bool = setting(False, "parameters, points and gradients as one contiguous buffer each")
    dist_timeout_s: float = setting(
        300.0, "two devices: seconds after which a dead or hung rank stops the run", low=0.0, low_open=True,
        machine=True,
    )  # fmt: skip
    data_root: str | None = setting(None, "dataset directory (default: $SAMPA_DATA, then ./data)",
                                    machine=True)  # fmt: skip
    download: bool = setting(True, "download CIFAR when it is missing", machine=True)
    synthetic_train_size: int = setting(5000, "synthetic datasets: training samples", low=10)
    synthetic_test_size: int = setting(1000, "synthetic datasets: test samples", low=1)
    synthetic_distractor: float = setting(
        0.8, "synthetic datasets: weight of another class's pattern in each image (difficulty)", low=0.0
    )
    synthetic_noise: float = setting(
        1.0, "synthetic datasets: weight of the per-sample noise (difficulty)", low=0.0
    )
    eval_batch_size: int = setting(1000, "evaluation batch size", low=1)
    threads: int = setting(
        0, "torch CPU threads (0 = torch's default)", low=0, high=2**31, high_open=True, machine=True
    )  # torch.set_num_threads takes a C int
    num_workers: int | None = setting(
        None, "ImageNet: JPEG-decoding worker processes per training process (null = min(8, CPUs); "
        "0 = decode in the training process)", low=0, machine=True,
    )  # fmt: skip
    test_every_epoch: bool = setting(False, "also evaluate the test set each epoch (for curves)")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
FIELD_NAMES = tuple(FIELDS)
FIELD_TYPES: dict[str, Any] = typing.get_type_hints(RunConfig)
#: settings that do not change results: set per machine (never by an experiment), may differ on restart
MACHINE_KEYS = tuple(name for name, f in FIELDS.items() if f.metadata["machine"])
#: the in-memory image datasets (``sampa.data.DATASET_NAMES``, named here without torch): the only ones
#: with a validation split of their training set, label noise and Cutout
IMAGE_DATASETS = ("cifar10", "cifar100", "synthetic", "synthetic100")
#: the synthetic images, the only datasets generated from the ``synthetic_*`` settings
SYNTHETIC_IMAGES = ("synthetic", "synthetic100")
#: the regression tasks (STS-B): their loss is the squared error, which has no label smoothing
REGRESSION_DATASETS = tuple(task.dataset for task in GLUE_TASKS.values() if task.regression)
#: the synthetic images' size and difficulty (they feed the generator alone)
SYNTHETIC_KEYS = ("synthetic_train_size", "synthetic_test_size", "synthetic_distractor", "synthetic_noise")


@dataclass(frozen=True)
class ReadWhen:
    """The runs that read a setting: those whose setting ``by`` is one of ``only`` (all when None) and
    none of ``never``. In a run that ignores it, a value other than the default (or one of ``accepted``:
    values that say what the run does anyway) is an error (:func:`check_ignored`): ``why`` it is ignored,
    ``fix`` what to do instead. ``strict=False``: no error, the setting is only left out (data settings
    a text experiment inherits from its config's shared settings)."""

    by: str
    only: tuple[str, ...] | None = None
    never: tuple[str, ...] = ()
    why: str = ""
    fix: str = ""
    accepted: tuple[Any, ...] = ()
    strict: bool = True

    def reads(self, run: Mapping[str, Any]) -> bool:
        """Does the run (a mapping of settings; missing ones are RunConfig's defaults) read the setting?"""
        value = run.get(self.by, FIELDS[self.by].default)
        return (self.only is None or value in self.only) and value not in self.never


_IMAGE_LIST = ", ".join(IMAGE_DATASETS)
_SGD = "remove it or use base_optimizer 'sgd'"
#: which setting is read when: the settings some runs ignore (the others are read by every run; the
#: machine settings are not run settings). Validation refuses a value such a run would silently ignore
#: (:func:`check_ignored`), and a run's planned settings and run path leave out the settings it ignores
#: (:func:`ignored_keys`), so two runs that differ only there are one run
READ_WHEN: dict[str, ReadWhen] = {
    "momentum": ReadWhen("base_optimizer", only=("sgd",), why="AdamW uses betas", fix=_SGD),
    "nesterov": ReadWhen("base_optimizer", only=("sgd",), why="Nesterov momentum is SGD's", fix=_SGD),
    "betas": ReadWhen(
        "base_optimizer", only=("adamw",), why="SGD uses momentum",
        fix="remove it or use base_optimizer 'adamw'",
    ),
    "warmup": ReadWhen(
        "schedule", only=("linear",), why="only the linear schedule warms up",
        fix="remove it or use schedule 'linear'",
    ),
    "label_smoothing": ReadWhen(
        "dataset", never=REGRESSION_DATASETS, why="a regression task: its loss is the squared error",
        fix="remove it or use label_smoothing 0", accepted=(0.0,),
    ),
    "channels_last": ReadWhen(
        "dataset", never=TEXT_DATASETS, why="text models read token ids, not images", fix="remove it (false)"
    ),
    "label_noise": ReadWhen(
        "dataset", only=IMAGE_DATASETS, why=f"label noise is implemented for {_IMAGE_LIST} only",
        fix="use label_noise 0",
    ),
    "cutout": ReadWhen(
        "dataset", only=IMAGE_DATASETS, why=f"Cutout is implemented for {_IMAGE_LIST} only",
        fix="use cutout 0",
    ),
    # data settings: left out without an error (text experiments inherit them from a config's shared run)
    "val_fraction": ReadWhen("dataset", only=IMAGE_DATASETS, strict=False),  # the sources have an eval set
    **dict.fromkeys(SYNTHETIC_KEYS, ReadWhen("dataset", only=SYNTHETIC_IMAGES, strict=False)),
}  # fmt: skip


def ignored_keys(run: Mapping[str, Any]) -> tuple[str, ...]:
    """The settings of :data:`READ_WHEN` that ``run`` (a mapping of settings; missing ones are RunConfig's
    defaults) does not read: its planned settings and run path leave them out."""
    return tuple(key for key, when in READ_WHEN.items() if not when.reads(run))


def check_ignored(cfg: RunConfig) -> None:
    """A setting the run does not read keeps its default (or an ``accepted`` value): any other value would
    be silently ignored, so it is a :class:`ConfigError` naming the setting, why and what to do."""
    run = {when.by: getattr(cfg, when.by) for when in READ_WHEN.values()}  # the settings that decide
    for key in ignored_keys(run):
        when, value = READ_WHEN[key], getattr(cfg, key)
        if not when.strict or _plain(value) in (_plain(FIELDS[key].default), *when.accepted):
            continue
        raise ConfigError(
            f"{key} {_shown(value)} is not read by {when.by} {run[when.by]!r} ({when.why}); {when.fix}"
        )


def _plain(value: Any) -> Any:
    """Lists as tuples, so that a pair compares equal however it was written."""
    return tuple(value) if isinstance(value, list) else value


def _shown(value: Any) -> str:
    """A value as a config file writes it (true, [0.8, 0.99], 0.5)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list):
        return "[" + ", ".join(map(_shown, value)) + "]"
    return repr(value)


def config_from_dict(values: Mapping[str, Any]) -> RunConfig:
    """Build a config from a mapping (e.g. a YAML file); unknown keys are an error."""
    unknown = sorted(set(values) - set(FIELD_NAMES))
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r}; valid keys: {', '.join(FIELD_NAMES)}")
    values = dict(values)
    if isinstance(values.get("betas"), list):
        values["betas"] = tuple(values["betas"])
    if values.get("hparams") is None:
        values["hparams"] = {}
    return RunConfig(**values)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (or JSON) mapping of run settings (a workflow config is a one-line error saying so)."""
    values = io.read_yaml_mapping(path, "config file", ConfigError)
    if "experiments" in values:
        raise ConfigError(
            f"config file {str(path)!r} is a workflow config (it has 'experiments'); run it with "
            "snakemake --configfile or sampa plan --config, or give train a file of run settings "
            "(keys of sampa.config.RunConfig)"
        )
    return values


def train_set_size(cfg: RunConfig) -> int:
    """Number of training samples after the train/validation split (no data is read)."""
    from sampa.data.sources import TRAIN_SIZES  # no held-out split: validation is the eval set

    if cfg.dataset in TRAIN_SIZES:
        return TRAIN_SIZES[cfg.dataset]
    total = _split_total(cfg)
    return total - round(total * cfg.val_fraction)


def _split_total(cfg: RunConfig) -> int:
    """Training samples before a CIFAR-style dataset's train/validation split."""
    return cfg.synthetic_train_size if cfg.dataset in SYNTHETIC_IMAGES else CIFAR_TRAIN_SIZE


# ----------------------------------------------------------------------------------------------
# Validation


def validate(cfg: RunConfig) -> RunConfig:
    """Check every field by its type and metadata, then the relations between fields; return the
    config unchanged or raise :class:`ConfigError`."""
    for name, f in FIELDS.items():
        check_value(name, getattr(cfg, name), FIELD_TYPES[name], f.metadata)
    _check_relations(cfg)
    return cfg


def check_value(name: str, value: Any, kind: Any, meta: Mapping[str, Any]) -> None:
    """One field: its type first (bool, int, finite float, string, optional path, pair, mapping),
    then its choices or range."""
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false (got {value!r})")
    elif kind is int:
        _check_int(name, value, meta)
    elif kind == int | None:
        if value is not None:
            _check_int(name, value, meta)
    elif kind is float:
        _check_float(name, value, meta)
    elif kind is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{name} must be a non-empty string (got {value!r})")
    elif kind == float | None:
        if value is not None:
            _check_float(name, value, meta)
    elif kind == str | None:
        if value is not None and (not isinstance(value, str) or not value or "\0" in value):
            raise ConfigError(f"{name} must be a path (a non-empty string) or null (got {value!r})")
    elif typing.get_origin(kind) is tuple:
        _check_numbers(name, value, typing.get_args(kind), meta)
    elif typing.get_origin(kind) is dict and not _is_mapping(value):
        raise ConfigError(f"{name} must be a mapping of names to values (got {value!r})")
    choices = meta.get("choices")
    if choices is not None:
        valid = tuple(choices() if callable(choices) else choices)
        if value not in valid:
            raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(map(str, valid))}")


def _check_int(name: str, value: Any, meta: Mapping[str, Any]) -> None:
    low, high = meta.get("low"), meta.get("high")
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        raise ConfigError(f"{name} must be an integer >= {low} (got {value!r})")
    if high is not None and (value >= high if meta.get("high_open") else value > high):
        raise ConfigError(f"{name} must be an integer in {_span(meta)} (got {value!r})")


def _check_float(name: str, value: Any, meta: Mapping[str, Any]) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number (got {value!r})")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number (got {value!r})")
    low = -math.inf if meta.get("low") is None else meta["low"]
    high = math.inf if meta.get("high") is None else meta["high"]
    too_low = value <= low if meta.get("low_open") else value < low
    too_high = value >= high if meta.get("high_open") else value > high
    if too_low or too_high:
        raise ConfigError(f"{name} must be in {_span(meta)} (got {value!r})")


def _is_mapping(value: Any) -> bool:
    return isinstance(value, Mapping) and all(isinstance(k, str) for k in value)


def _check_numbers(name: str, value: Any, items: tuple[Any, ...], meta: Mapping[str, Any]) -> None:
    """A tuple of numbers: a fixed count (``tuple[float, float]``) or one or more (``tuple[float, ...]``)."""
    variadic = items[-1] is Ellipsis
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        wrong = True
    else:
        wrong = len(value) < 1 if variadic else len(value) != len(items)
    if wrong:
        what = "one or more numbers" if variadic else f"{len(items)} numbers"
        raise ConfigError(f"{name} must be {what} (got {value!r})")
    for i, item in enumerate(value):
        _check_float(f"{name}[{i}]", item, meta)


def valid_values(kind: Any, meta: Mapping[str, Any]) -> str:
    """What a field accepts, for help texts: its choices or its range ("" for booleans, paths, mappings)."""
    choices = meta.get("choices")
    if choices is not None:
        return "one of: " + ", ".join(map(str, choices() if callable(choices) else choices))
    low, high = meta.get("low"), meta.get("high")
    if low is None and high is None:
        return ""
    each = "each " if typing.get_origin(kind) is tuple else ""
    if kind in (int, int | None):
        return f"an integer >= {low}" if high is None else f"an integer in {_span(meta)}"
    return f"{each}in {_span(meta)}"


def _span(meta: Mapping[str, Any]) -> str:
    """A field's range as every message and help text writes it (:func:`sampa.ranges.interval`)."""
    open_ends = {"low_open": bool(meta.get("low_open")), "high_open": bool(meta.get("high_open"))}
    return interval(meta.get("low"), meta.get("high"), **open_ends)


def _check_extras(cfg: RunConfig) -> None:
    from sampa import extras
    from sampa.requirements import EXTRA_NEEDED

    for key, name in (("model", cfg.model), ("dataset", cfg.dataset)):
        for prefix, extra in EXTRA_NEEDED.items():
            if name.startswith(prefix) and not extras.available(extra):
                raise ConfigError(f"{key} {name!r} needs the {extra} extra: pip install -e '.[{extra}]'")


def _check_modality(cfg: RunConfig) -> None:
    """A text model needs a text dataset, an image model an image dataset."""
    from sampa.models.pretrained import TEXT_MODEL_NAMES

    text = cfg.dataset in TEXT_DATASETS
    if (cfg.model in TEXT_MODEL_NAMES) != text:
        kind = "text" if text else "image"
        models = TEXT_MODEL_NAMES if text else [m for m in _models() if m not in TEXT_MODEL_NAMES]
        raise ConfigError(
            f"model {cfg.model!r} cannot read the {kind} dataset {cfg.dataset!r}; "
            f"choose {'a text' if text else 'an image'} model: {', '.join(models)}"
        )


def _check_cutout(cfg: RunConfig) -> None:
    """A Cutout patch no larger than the images (only the in-memory image datasets read it: READ_WHEN)."""
    from sampa.data import check_cutout

    try:
        check_cutout(cfg.dataset, cfg.cutout)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _check_split(cfg: RunConfig) -> None:
    """A CIFAR-style dataset's validation split holds out at least one sample and keeps at least one."""
    from sampa.data.sources import TRAIN_SIZES  # these have their own validation set

    if cfg.dataset in TRAIN_SIZES:
        return
    total = _split_total(cfg)
    held_out = round(total * cfg.val_fraction)
    if not 0 < held_out < total:
        raise ConfigError(
            f"val_fraction {cfg.val_fraction!r} holds out {held_out} of {total} training samples "
            f"of {cfg.dataset}; it must hold out 1 to {total - 1}"
        )


def _check_relations(cfg: RunConfig) -> None:
    """Checks that involve several fields, the method's hyperparameters or the data's size."""
    from sampa.backends.fastpath import FastPath
    from sampa.backends.fused import UNBATCHABLE_MODELS
    from sampa.optim import HyperparameterError, check_method

    for key, value in cfg.hparams.items():  # written to config.json: JSON numbers are finite
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"hparams.{key} must be a finite number (got {value!r})")
    try:
        check_method(cfg.optimizer, dict(cfg.hparams))
    except HyperparameterError as err:
        raise ConfigError(str(err)) from None
    _check_modality(cfg)
    _check_extras(cfg)
    check_ignored(cfg)
    _check_cutout(cfg)
    if cfg.devices % 2 and cfg.devices != 1:
        raise ConfigError(f"devices must be 1 or an even number (2, 4, 8, ...) (got {cfg.devices!r})")
    if not re.fullmatch(DEVICE_PATTERN, cfg.device):
        raise ConfigError(f"device must be one of auto, cpu, cuda, cuda:N (got {cfg.device!r})")
    if cfg.device.startswith("cuda") and cfg.devices == 1:  # two devices: the launcher counts them
        import torch

        # device_count asks NVML: it leaves CUDA uninitialised, so the `--gpus` claim that follows
        # validation still chooses the GPU (torch.cuda.is_available initialises CUDA, which then ignores
        # a later CUDA_VISIBLE_DEVICES)
        index, count = int(cfg.device.partition(":")[2] or 0), torch.cuda.device_count()
        if count == 0:
            raise ConfigError(f"device {cfg.device!r}: CUDA is not available here; use --device cpu or auto")
        if index >= count:
            raise ConfigError(
                f"device {cfg.device!r}: this machine has {count} GPU(s) (cuda:0 to cuda:{count - 1})"
            )
    if cfg.backend == "fused" and cfg.devices != 1:
        raise ConfigError(f"backend 'fused' runs on one device; devices must be 1 (got {cfg.devices})")
    if cfg.backend == "fused" and cfg.model in UNBATCHABLE_MODELS:
        raise ConfigError(
            f"backend 'fused' cannot batch model {cfg.model!r} (torch.func.vmap rejects its data-dependent "
            "attention mask); use backend 'single'"
        )
    if cfg.compile == "step" and cfg.devices != 1:
        raise ConfigError(f"compile 'step' runs on one device; devices must be 1 (got {cfg.devices})")
    try:
        FastPath(compile=cfg.compile)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    _check_split(cfg)
    n_train = train_set_size(cfg)
    if n_train < 1 or cfg.batch_size > n_train:
        raise ConfigError(
            f"batch_size {cfg.batch_size} is larger than the training set "
            f"({n_train} samples of {cfg.dataset})"
        )
