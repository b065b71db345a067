"""The training engine: one run = one directory; method-agnostic (methods come from ``sampa.optim``).

Run directory (deterministic names, no timestamps):

* ``config.json``     the resolved configuration (written first; a restart must match it)
* ``log.jsonl``       one line per finished epoch (rewritten atomically from the checkpoint)
* ``checkpoint.pt``   model + method + engine state after the last finished epoch (atomic; removed
                      when the run completes)
* ``best.pt``         model weights of the best validation epoch (atomic)
* ``metrics.json``    final results + provenance, written atomically last: its presence means
                      "complete" (or ``"diverged": true``); an interrupted run never has it.

Restarting the same command resumes from ``checkpoint.pt`` and ends with the same results as an
uninterrupted run (deterministic data order, RNG states in the checkpoint).
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import statistics
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sampa import io
from sampa.backends import Backend
from sampa.backends.fastpath import FastPath, optimizer_kwargs
from sampa.backends.fused import FusedSingleDevice
from sampa.backends.single import SingleDevice, resolve_device
from sampa.config import RunConfig, validate
from sampa.data import Augment, Dataset, eval_batches, load_dataset, num_batches, train_batches
from sampa.losses import make_loss
from sampa.metrics import MemoryMonitor, Stopwatch, provenance
from sampa.models import build_model
from sampa.optim import Method, StepRecord, build_method

#: config keys that do not change results; a restart may change them
NON_RESULT_KEYS = frozenset({"device", "threads", "data_root", "download", "dist_timeout_s"})


class RunError(RuntimeError):
    """A run cannot start or continue (message: one line)."""


class RunPaths:
    """The files of one run directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / "config.json"
        self.log = root / "log.jsonl"
        self.checkpoint = root / "checkpoint.pt"
        self.best = root / "best.pt"
        self.metrics = root / "metrics.json"
        self.lock = root / ".lock"


@dataclass
class EngineState:
    """What the engine carries between epochs (saved in the checkpoint)."""

    epoch: int = 0  # epochs finished
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_acc: float = -1.0
    best_epoch: int = 0
    memory: dict[str, Any] | None = None
    resumes: int = 0


# ----------------------------------------------------------------------------------------------
# Entry point


def train(
    cfg: RunConfig,
    out_dir: str | os.PathLike,
    backend: Backend | None = None,
    *,
    stop_after: int | None = None,
    log_progress: bool = True,
) -> dict[str, Any] | None:
    """Train one run into ``out_dir``; return the metrics (None if stopped early by ``stop_after``).

    ``stop_after`` ends this invocation after that many epochs (as an interruption would), leaving a
    resumable checkpoint; the same call later continues the run.
    """
    validate(cfg)
    paths = RunPaths(Path(out_dir))
    _check_same_run(paths, cfg)
    if paths.metrics.exists():
        return io.read_json(paths.metrics)
    if backend is None:
        backend = single_device_backend(cfg)
    with _exclusive(paths, backend.is_writer):
        if backend.is_writer and not paths.config.exists():
            io.write_json(paths.config, cfg.to_dict())
        return _Run(cfg, paths, backend, log_progress).execute(stop_after)


@contextlib.contextmanager
def _exclusive(paths: RunPaths, is_writer: bool) -> Iterator[None]:
    """Hold a lock on the run directory so two processes never write the same run."""
    if not is_writer:
        yield
        return
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.lock, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"another process is already training into {paths.root}") from None
        yield


def single_device_backend(cfg: RunConfig) -> Backend:
    """The one-device backend ``cfg.backend`` names: the reference, or the fused one."""
    device = resolve_device(cfg.device)
    return FusedSingleDevice(device) if cfg.backend == "fused" else SingleDevice(device)


def fast_path(cfg: RunConfig) -> FastPath:
    """The run's fast-path settings (all off: the fp32 eager reference)."""
    return FastPath(
        amp=cfg.amp,
        channels_last=cfg.channels_last,
        cudnn_benchmark=cfg.cudnn_benchmark,
        compile=cfg.compile,
        flat_buffers=cfg.flat_buffers,
    )


def _check_same_run(paths: RunPaths, cfg: RunConfig) -> None:
    """An existing run directory must describe the same run (settings that change results)."""
    if not paths.config.exists():
        return
    # keys added since the directory was written mean their defaults (e.g. backend "single")
    existing, wanted = RunConfig().to_dict() | io.read_json(paths.config), cfg.to_dict()
    diff = sorted(
        k
        for k in set(existing) | set(wanted)
        if k not in NON_RESULT_KEYS and existing.get(k) != wanted.get(k)
    )
    if diff:
        key = diff[0]
        raise RunError(
            f"{paths.root} holds a different run ({key}: {existing.get(key)!r} there, "
            f"{wanted.get(key)!r} now); use another output directory or delete it"
        )


# ----------------------------------------------------------------------------------------------
# One run


class _Run:
    def __init__(self, cfg: RunConfig, paths: RunPaths, backend: Backend, log_progress: bool) -> None:
        self.cfg, self.paths, self.backend = cfg, paths, backend
        self.device = backend.device
        self.log_progress = log_progress and backend.is_writer
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.data = self._load_data()
        self.fast = fast_path(cfg)
        torch.manual_seed(cfg.seed)  # model initialisation
        model = build_model(cfg.model, self.data.num_classes).to(self.device)
        self.model: nn.Module = self.fast.prepare_model(model)
        self.method: Method = build_method(
            cfg.optimizer,
            self.model,
            make_loss(cfg.label_smoothing),
            make_base_optimizer(cfg, self.model),
            executor=backend.executor,
            seed=cfg.seed,
            **cfg.hparams,
        )
        self.augment = Augment(cutout=cfg.cutout)
        self.steps_per_epoch = num_batches(len(self.data.train), cfg.batch_size)
        self.step = self.fast.prepare_method(self.method)  # method.step, or its compiled form
        self.state = self._resume_or_start()  # after prepare_method: flat buffers must exist first
        self.memory = MemoryMonitor([self.device])

    def _load_data(self) -> Dataset:
        cfg = self.cfg
        return load_dataset(
            cfg.dataset,
            seed=cfg.seed,
            root=cfg.data_root,
            val_fraction=cfg.val_fraction,
            label_noise=cfg.label_noise,
            device=self.device,
            download=cfg.download,
            synthetic_train_size=cfg.synthetic_train_size,
            synthetic_test_size=cfg.synthetic_test_size,
        )

    def _resume_or_start(self) -> EngineState:
        if not self.paths.checkpoint.exists():
            return EngineState()
        ckpt = io.load_torch(self.paths.checkpoint, self.device)
        self.model.load_state_dict(ckpt["model"])
        self.method.load_state_dict(ckpt["method"])
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        engine = dict(ckpt["engine"])
        if isinstance(engine["memory"], list):  # one report per process
            engine["memory"] = engine["memory"][self.backend.rank]
        state = EngineState(**engine)
        state.resumes += 1
        if self.log_progress:
            print(
                f"[{self.paths.root}] resuming after epoch {state.epoch}/{self.cfg.epochs}", file=sys.stderr
            )
        return state

    # -- main loop --------------------------------------------------------------------------

    def execute(self, stop_after: int | None) -> dict[str, Any] | None:
        self.memory.start()
        try:
            with self.fast.session():
                return self._train_epochs(stop_after)
        finally:
            self.memory.stop()

    def _train_epochs(self, stop_after: int | None) -> dict[str, Any] | None:
        epochs_run = 0
        while self.state.epoch < self.cfg.epochs:
            row = self._epoch(self.state.epoch)
            self._finish_epoch(row)
            epochs_run += 1
            if row["diverged"]:
                return self._finish_run(diverged_epoch=row["epoch"])
            if stop_after is not None and epochs_run >= stop_after and self.state.epoch < self.cfg.epochs:
                return None
        return self._finish_run(diverged_epoch=None)

    def _epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch (timed, synchronised, evaluation excluded), then evaluate."""
        self.model.train()
        totals = _EpochTotals(self.method.trace_keys)
        self.backend.stats()  # reset backend counters
        watch = Stopwatch(self.device)
        with watch:
            self.method.start_epoch(epoch, self.cfg.epochs, self.steps_per_epoch)
            batches = train_batches(
                self.data,
                self.cfg.batch_size,
                seed=self.cfg.seed,
                epoch=epoch,
                augment=self.augment,
                with_indices=True,
            )
            for step, (inputs, targets, indices) in enumerate(batches):
                self._set_lr(epoch, step)
                inputs = self.fast.prepare_batch(inputs)
                totals.add(self.step(*self.backend.shard(inputs, targets, indices)))
        row = {
            "epoch": epoch + 1,
            "lr": self._lr(epoch, 0),
            **totals.summary(self.backend.sum_over_replicas),
            "epoch_time_s": watch.seconds,
            **{f"backend_{k}": v for k, v in self.backend.stats().items()},
        }
        row["diverged"] = not math.isfinite(row["train_loss"])
        if not row["diverged"]:
            row.update(self._evaluate_epoch(epoch + 1))
        return row

    def _evaluate_epoch(self, epoch: int) -> dict[str, Any]:
        watch = Stopwatch(self.device)
        with watch:
            self.backend.check_replicas(self.model, epoch)
            self.backend.before_eval(self.model)
            out = _prefixed("val", evaluate(self.model, self.data, "val", self.cfg.eval_batch_size))
            if self.cfg.test_every_epoch:
                out |= _prefixed("test", evaluate(self.model, self.data, "test", self.cfg.eval_batch_size))
        out["eval_time_s"] = watch.seconds
        return out

    def _finish_epoch(self, row: dict[str, Any]) -> None:
        state = self.state
        state.epoch += 1
        state.history.append(row)
        improved = not row["diverged"] and row["val_acc"] > state.best_val_acc
        if improved:
            state.best_val_acc, state.best_epoch = row["val_acc"], row["epoch"]
        state.memory = self.memory.report(state.memory)
        memory_per_process = self.backend.gather(state.memory)
        if self.backend.is_writer:
            if improved:
                io.save_torch(self.paths.best, self.model.state_dict())
            io.save_torch(self.paths.checkpoint, self._checkpoint(memory_per_process))
            io.write_jsonl(self.paths.log, [_json_safe(r) for r in state.history])
        if self.log_progress:
            print(_progress_line(self.cfg, row, state), file=sys.stderr, flush=True)

    def _checkpoint(self, memory_per_process: list[dict[str, Any]]) -> dict[str, Any]:
        s = self.state
        return {
            "model": self.model.state_dict(),
            "method": self.method.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "engine": {
                "epoch": s.epoch,
                "history": [_json_safe(r) for r in s.history],
                "best_val_acc": s.best_val_acc,
                "best_epoch": s.best_epoch,
                "memory": memory_per_process[0] if len(memory_per_process) == 1 else memory_per_process,
                "resumes": s.resumes,
            },
        }

    def _finish_run(self, diverged_epoch: int | None) -> dict[str, Any]:
        memory = self._gathered_memory()  # every process: also waits until best.pt is written
        self.backend.before_eval(self.model)
        final_val = evaluate(self.model, self.data, "val", self.cfg.eval_batch_size)
        final_test = evaluate(self.model, self.data, "test", self.cfg.eval_batch_size)
        best_test = self._best_checkpoint_test()
        metrics = build_metrics(
            self.cfg, self.state, final_val, final_test, best_test, diverged_epoch, self.steps_per_epoch
        )
        metrics["provenance"] = provenance([self.device]) | {"resumes": self.state.resumes}
        metrics["backend"] = {
            "name": type(self.backend).__name__,
            "world_size": self.backend.world_size,
            "executor": type(self.backend.executor).__name__,
            **self.backend.describe(),
            **_backend_time(self.state.history, metrics["time"]["train_total_s"]),
        }
        metrics["memory"] = memory
        if self.backend.is_writer:
            io.write_json(self.paths.metrics, _json_safe(metrics))
            self.paths.checkpoint.unlink(missing_ok=True)
        return metrics

    def _best_checkpoint_test(self) -> dict[str, float] | None:
        if self.state.best_epoch == 0 or not self.paths.best.exists():
            return None
        best_model = build_model(self.cfg.model, self.data.num_classes).to(self.device)
        best_model.load_state_dict(io.load_torch(self.paths.best, self.device))
        return evaluate(best_model, self.data, "test", self.cfg.eval_batch_size)

    def _gathered_memory(self) -> dict[str, Any]:
        reports = self.backend.gather(self.memory.report(self.state.memory))
        if len(reports) == 1:
            return reports[0]
        return {"per_rank": reports}

    # -- learning rate ------------------------------------------------------------------------

    def _lr(self, epoch: int, step: int) -> float:
        cfg = self.cfg
        if cfg.schedule == "constant":
            return cfg.lr
        if cfg.schedule == "cosine":  # stepped once per epoch, as CosineAnnealingLR(T_max=epochs)
            progress = epoch / cfg.epochs
        else:  # cosine_iter: stepped every iteration
            progress = (epoch * self.steps_per_epoch + step) / (cfg.epochs * self.steps_per_epoch)
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * progress))

    def _set_lr(self, epoch: int, step: int) -> None:
        if step == 0 or self.cfg.schedule == "cosine_iter":
            lr = self._lr(epoch, step)
            for group in self.method.base_optimizer.param_groups:
                group["lr"] = lr


# ----------------------------------------------------------------------------------------------
# Pieces


def make_base_optimizer(cfg: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    """torch.optim.SGD (coupled L2 on every tensor, as the official code) or AdamW."""
    params = [p for p in model.parameters() if p.requires_grad]
    kernels = optimizer_kwargs(cfg.optimizer_impl)  # torch's default, foreach or fused implementation
    if cfg.base_optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, **kernels)
    return torch.optim.SGD(
        params,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov,
        **kernels,
    )


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, split: str, batch_size: int) -> dict[str, float]:
    """Mean cross-entropy (no smoothing) and accuracy on a split, in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=next(model.parameters()).device)
    correct = torch.zeros((), dtype=torch.long, device=loss_sum.device)
    count = 0
    for inputs, targets in eval_batches(data, split, batch_size):
        logits = model(inputs).float()
        loss_sum += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").double()
        correct += (logits.argmax(dim=1) == targets).sum()
        count += targets.shape[0]
    model.train(was_training)
    return {"loss": float(loss_sum) / count, "acc": float(correct) / count}


class _EpochTotals:
    """Sums of step records kept on the device; read once per epoch."""

    def __init__(self, trace_keys: tuple[str, ...]) -> None:
        self.loss = self.correct = None
        self.count = self.steps = 0
        self.passes = {"forward": 0, "backward": 0, "sequential": 0, "ideal_sequential": 0}
        self.stats: dict[str, list[Tensor | float]] = {}
        self.trace_keys = trace_keys

    def add(self, rec: StepRecord) -> None:
        loss = rec.loss.double() * rec.count
        self.loss = loss if self.loss is None else self.loss + loss
        self.correct = rec.correct if self.correct is None else self.correct + rec.correct
        self.count += rec.count
        self.steps += 1
        for key in self.passes:
            self.passes[key] += getattr(rec, key)
        for key, value in rec.stats.items():
            self.stats.setdefault(key, []).append(value)

    def summary(self, sum_over_replicas: Callable[[list[float]], list[float]]) -> dict[str, Any]:
        """Epoch means; ``sum_over_replicas`` adds up the totals of data-parallel processes."""
        loss, correct, count = sum_over_replicas([float(self.loss), float(self.correct), float(self.count)])
        out: dict[str, Any] = {
            "train_loss": loss / count,
            "train_acc": correct / count,
            "steps": self.steps,
            "passes_per_step": {k: v / self.steps for k, v in self.passes.items()},
        }
        stats: dict[str, Any] = {}
        for key, values in self.stats.items():
            series = torch.stack([torch.as_tensor(v, dtype=torch.float64).cpu() for v in values])
            stats[key] = {
                "mean": float(series.mean()),
                "min": float(series.min()),
                "max": float(series.max()),
            }
            if key in self.trace_keys:
                stats[key]["trace"] = series.tolist()
        if stats:
            out["stats"] = stats
        return out


def build_metrics(
    cfg: RunConfig,
    state: EngineState,
    final_val: dict[str, float],
    final_test: dict[str, float],
    best_test: dict[str, float] | None,
    diverged_epoch: int | None,
    steps_per_epoch: int,
) -> dict[str, Any]:
    """The final ``metrics.json`` content (before provenance/memory are attached)."""
    rows = state.history
    times = [r["epoch_time_s"] for r in rows]
    steady = times[1:] if len(times) > 1 else times
    last = rows[-1]
    return {
        "status": "diverged" if diverged_epoch is not None else "complete",
        "diverged": diverged_epoch is not None,
        "diverged_epoch": diverged_epoch,
        "epochs": cfg.epochs,
        "epochs_completed": state.epoch,
        "best_epoch": state.best_epoch or None,
        "best_val_acc": state.best_val_acc if state.best_epoch else None,
        "test_acc": best_test["acc"] if best_test else None,  # the paper's number: best-validation checkpoint
        "test_loss": best_test["loss"] if best_test else None,
        "final_val_acc": final_val["acc"],
        "final_val_loss": final_val["loss"],
        "final_test_acc": final_test["acc"],
        "final_test_loss": final_test["loss"],
        "final_train_loss": last["train_loss"],
        "final_train_acc": last["train_acc"],
        "time": {
            "first_epoch_s": times[0],
            "epoch_median_s": statistics.median(steady),
            "epoch_mean_s": statistics.fmean(steady),
            "train_total_s": sum(times),
            "step_median_s": statistics.median(steady) / steps_per_epoch,
            "steps_per_epoch": steps_per_epoch,
            "note": "train steps only, synchronised, evaluation excluded; median/mean skip epoch 1 if >1",
        },
        "passes_per_step": {
            k: statistics.fmean(r["passes_per_step"][k] for r in rows) for k in rows[0]["passes_per_step"]
        },
        "config": cfg.to_dict(),
    }


def _backend_time(history: list[dict[str, Any]], train_total_s: float) -> dict[str, Any]:
    """Run totals of the backend's per-epoch seconds (``backend_*_s``) and their share of training time."""
    keys = sorted({k for row in history for k in row if k.startswith("backend_") and k.endswith("_s")})
    if not keys:
        return {}
    seconds = {k.removeprefix("backend_"): sum(row.get(k, 0.0) for row in history) for k in keys}
    share = {k: v / train_total_s for k, v in seconds.items()} if train_total_s > 0 else {}
    return {"seconds": seconds, "share_of_train_time": share}


def _prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{k}": v for k, v in values.items()}


def _json_safe(obj: Any) -> Any:
    """Replace NaN/inf by None so JSON stays standard."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def _progress_line(cfg: RunConfig, row: dict[str, Any], state: EngineState) -> str:
    head = f"[{cfg.model} {cfg.dataset} {cfg.optimizer} seed={cfg.seed}] epoch {row['epoch']}/{cfg.epochs}"
    if row["diverged"]:
        return f"{head} DIVERGED (non-finite training loss)"
    return (
        f"{head} loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}% | "
        f"val {100 * row['val_acc']:.2f}% (best {100 * state.best_val_acc:.2f}% @ {state.best_epoch}) | "
        f"{row['epoch_time_s']:.2f} s train | lr {row['lr']:.4g}"
    )
