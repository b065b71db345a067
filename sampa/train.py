"""The training engine: one run = one directory (:mod:`sampa.rundir`); method-agnostic (methods come
from ``sampa.optim``).

:meth:`_Run.execute` is the paper's protocol (Section 5.1) read top to bottom: train an epoch, stop if
the loss is not finite, evaluate on the validation split, record the epoch (best-validation weights,
log, checkpoint), and at the end report the test accuracy of the best-validation weights (where validation
and test are one set, ImageNet's and GLUE's, that is the best epoch's validation score). Restarting
the same command resumes from the checkpoint and ends with the same results as an uninterrupted run
(deterministic data order, RNG states in the checkpoint); see :mod:`sampa.rundir` for what is on
disk at every moment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import statistics
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from sampa import schedules
from sampa.backends import Backend
from sampa.backends.fastpath import FastPath, optimizer_kwargs
from sampa.backends.fused import FusedSingleDevice
from sampa.backends.single import SingleDevice, resolve_device
from sampa.config import MACHINE_KEYS, RunConfig, train_set_size, validate
from sampa.data import Augment, Dataset, eval_batches, load_dataset, num_batches, train_batches
from sampa.data.imagenet import loader_workers
from sampa.data.sources import Source, is_source, load_source, squared_error, task_metric_names
from sampa.faults import kill_point
from sampa.losses import make_loss
from sampa.metrics import MemoryMonitor, Stopwatch, provenance
from sampa.metrics.scores import Columns, merge_columns, topk_columns, topk_scores
from sampa.models import build_model
from sampa.models.pretrained import SOURCE_MODEL_NAMES, build_source_model
from sampa.optim import Method, StepRecord, build_method
from sampa.rundir import METRICS_VERSION, DamagedFileError, RunDir, RunError, os_error_message

__all__ = ["DamagedFileError", "EngineState", "RunError", "evaluate", "evaluate_sharded", "lr_at", "train"]

#: config keys that do not change results; a restart may change them
NON_RESULT_KEYS = frozenset(MACHINE_KEYS)
#: what a checkpoint must hold (and ``cuda_rng``: the CUDA generator's state, None on a CPU; checkpoints
#: written before it was saved lack it)
CHECKPOINT_KEYS = ("model", "method", "torch_rng", "engine")


@dataclass
class EngineState:
    """What the engine carries between epochs (saved in the checkpoint as one mapping)."""

    epoch: int = 0  # epochs finished
    history: list[dict[str, Any]] = field(default_factory=list)  # one log row per finished epoch
    best_val_score: float = -1.0  # the best validation value of the selection metric (selection_key)
    best_epoch: int = 0
    memory: dict[str, Any] | list[dict[str, Any]] | None = None  # per process once gathered
    resumes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], rank: int) -> EngineState:
        """The state saved by :meth:`to_dict`; ``rank`` picks this process's memory report."""
        names = {f.name for f in dataclasses.fields(cls)}
        if "best_val_acc" in values:  # checkpoints written before text tasks selected by task score
            values = {("best_val_score" if k == "best_val_acc" else k): v for k, v in values.items()}
        if set(values) != names:
            raise ValueError(f"engine state keys {sorted(values)} are not {sorted(names)}")
        state = cls(**values)
        if isinstance(state.memory, list):
            state.memory = state.memory[rank]
        return state


# ----------------------------------------------------------------------------------------------
# Learning rate: a pure function of the config, the epoch and the step within it


def _cosine(step: int, total: int, _warmup: int) -> float:
    return schedules.cosine(1.0, step / total)


#: schedule -> (factor of the peak lr at (step, total steps, warm-up steps), stepped every iteration?);
#: a schedule stepped once per epoch sees the step at which the epoch starts
SCHEDULE_FACTORS: dict[str, tuple[Callable[[int, int, int], float], bool]] = {
    "constant": (lambda _step, _total, _warmup: 1.0, False),
    "cosine": (_cosine, False),  # stepped once per epoch, as CosineAnnealingLR(T_max=epochs)
    "cosine_iter": (_cosine, True),
    "linear": (lambda step, total, warmup: schedules.linear_warmup_decay(1.0, step, total, warmup), True),
}


def test_is_val(cfg: RunConfig) -> bool:
    """Whether the run's validation and test sets are one set (a source's eval set: ImageNet's ``val/``,
    GLUE's dev set): then ``test_*`` are the validation scores of the best epoch, not a second pass."""
    return is_source(cfg.dataset)


def selection_key(cfg: RunConfig) -> str:
    """The log column that selects the best-validation checkpoint: ``val_acc``, or for a text task
    (GLUE, synthetic text) ``val_task_score``, the task's GLUE score (mean of its metrics)."""
    return "val_task_score" if task_metric_names(cfg.dataset) else "val_acc"


def steps_per_epoch(cfg: RunConfig) -> int:
    """Training steps per epoch (the last partial batch is kept); no data is read."""
    return num_batches(train_set_size(cfg), cfg.batch_size)


def lr_at(cfg: RunConfig, epoch: int, step: int, n_steps: int | None = None) -> float:
    """The learning rate of step ``step`` (0-based) of epoch ``epoch`` (0-based); ``n_steps``: steps per
    epoch (default: from the config; ImageNet runs pass the count of the folder they read)."""
    factor, per_step = SCHEDULE_FACTORS[cfg.schedule]
    n = steps_per_epoch(cfg) if n_steps is None else n_steps
    total = cfg.epochs * n
    return cfg.lr * factor(epoch * n + (step if per_step else 0), total, round(cfg.warmup * total))


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
    resumable checkpoint; the same call later continues the run. Bad values, a damaged run file or a
    failed write raise a one-line ``ConfigError``/``RunError`` (``DamagedFileError`` for a file).
    ``cfg.threads`` sets torch's CPU thread count for the call only: it is restored however it ends.
    """
    validate(cfg)
    run_dir = RunDir(out_dir)
    with _torch_threads(cfg.threads):
        return _train(cfg, run_dir, backend, stop_after, log_progress)


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """torch's CPU thread count set to ``threads`` (0: left alone) inside the block, restored after it
    however it ends (an API user's session keeps its own count)."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads:
            torch.set_num_threads(previous)


def _train(
    cfg: RunConfig, run_dir: RunDir, backend: Backend | None, stop_after: int | None, log_progress: bool
) -> dict[str, Any] | None:
    try:
        run_dir.check_same_run(cfg.to_dict(), RunConfig().to_dict(), MACHINE_KEYS)
        finished = run_dir.finished_metrics()
        is_writer = backend.is_writer if backend is not None else True
        if finished is not None:
            if is_writer:
                run_dir.tidy()  # a kill after metrics.json may have left the checkpoint
            return finished
        if backend is None:
            backend = single_device_backend(cfg)
        # data, weights, model and method first: a run that cannot start writes nothing
        run = _Run(cfg, run_dir, backend, log_progress)
        backend.gather(True)  # the writer waits until every process has started as well
        lock = run_dir.exclusive() if is_writer else contextlib.nullcontext()
        with lock:
            new = is_writer and not run_dir.config.exists()  # this invocation starts the run
            try:
                if is_writer:
                    run_dir.begin(cfg.to_dict())
                return run.execute(stop_after)
            except BaseException:
                if new:
                    run_dir.discard_unstarted()  # failed before its first epoch: as if never started
                raise
    except OSError as err:
        raise RunError(os_error_message(err)) from None


def single_device_backend(cfg: RunConfig) -> Backend:
    """The one-device backend ``cfg.backend`` names: the reference, or the fused one."""
    try:
        device = resolve_device(cfg.device)
    except RuntimeError as err:  # e.g. --device cuda without CUDA
        raise RunError(str(err)) from None
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


# ----------------------------------------------------------------------------------------------
# One run


class _Run:
    def __init__(self, cfg: RunConfig, run_dir: RunDir, backend: Backend, log_progress: bool) -> None:
        self.cfg, self.run_dir, self.backend = cfg, run_dir, backend
        self.device = backend.device
        self.log_progress = log_progress and backend.is_writer
        self.data = self._load_data()
        n_train = self.data.train_size if is_source(cfg.dataset) else len(self.data.train)
        self.steps_per_epoch = num_batches(n_train, cfg.batch_size)
        if cfg.dataset != "imagenet" and self.steps_per_epoch != steps_per_epoch(cfg):  # ImageNet: any folder
            raise RunError(f"{cfg.dataset} has {n_train} training samples, not the expected "
                           f"{train_set_size(cfg)}")  # fmt: skip
        self.fast = fast_path(cfg)
        torch.manual_seed(cfg.seed)  # model initialisation
        model = self._new_model().to(self.device)
        self.model: nn.Module = self.fast.prepare_model(model)
        self.method: Method = build_method(
            cfg.optimizer,
            self.model,
            squared_error if getattr(self.data, "regression", False) else make_loss(cfg.label_smoothing),
            make_base_optimizer(cfg, self.model),
            executor=backend.executor,
            seed=cfg.seed,
            **cfg.hparams,
        )
        self.method.clip_norm = cfg.clip_norm  # clips the update direction G (and SAMPa's look-ahead g)
        self.augment = Augment(cutout=cfg.cutout)
        self.step = self.fast.prepare_method(self.method)  # method.step, or its compiled form
        self.state = EngineState()  # the checkpoint's, once the run directory is held (execute)
        self.memory = MemoryMonitor([self.device])

    def _load_data(self) -> Dataset | Source:
        cfg = self.cfg
        if is_source(cfg.dataset):  # ImageNet, GLUE, synthetic text: batches and scores from the source
            workers = loader_workers(cfg.num_workers)  # ImageNet's decoding processes
            return load_source(cfg.dataset, root=cfg.data_root, device=self.device, workers=workers)
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
            synthetic_distractor=cfg.synthetic_distractor,
            synthetic_noise=cfg.synthetic_noise,
        )

    def _new_model(self) -> nn.Module:
        if self.cfg.model in SOURCE_MODEL_NAMES:
            return build_source_model(self.cfg.model, self.data.num_classes, self.cfg.data_root)
        return build_model(self.cfg.model, self.data.num_classes)

    def _train_batches(self, epoch: int) -> Iterator[tuple[Any, Tensor, Tensor]]:
        cfg = self.cfg
        if is_source(cfg.dataset):
            rows = self.backend.input_rows  # ImageNet: decode only the rows this process trains on
            return self.data.train_batches(cfg.batch_size, seed=cfg.seed, epoch=epoch, rows=rows)
        return train_batches(
            self.data, cfg.batch_size, seed=cfg.seed, epoch=epoch, augment=self.augment, with_indices=True
        )

    def _evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        """Loss, accuracy (and a source's own scores) on ``split``; a source: its eval set for both."""
        return evaluate_sharded(model, self.data, split, self.cfg.eval_batch_size, self.backend)

    def _resume_or_start(self) -> EngineState:
        ckpt = self.run_dir.load_checkpoint(self.device, CHECKPOINT_KEYS)
        if ckpt is None:
            return EngineState()
        try:
            self.model.load_state_dict(ckpt["model"])
            self.method.load_state_dict(ckpt["method"])
            torch.set_rng_state(ckpt["torch_rng"].cpu())
            restore_device_rng_state(self.device, ckpt.get("cuda_rng"))  # absent before it was saved
            state = EngineState.from_dict(ckpt["engine"], self.backend.rank)
        except (RuntimeError, KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
            raise self.run_dir.damaged(self.run_dir.checkpoint, str(err).splitlines()[0][:100]) from None
        state.resumes += 1
        if self.backend.is_writer:
            self.run_dir.write_log(state.history)  # a kill between log and checkpoint: log = checkpoint
        if self.log_progress:
            print(
                f"[{self.run_dir.root}] resuming after epoch {state.epoch}/{self.cfg.epochs}", file=sys.stderr
            )
        return state

    # -- the protocol ---------------------------------------------------------------------------

    def execute(self, stop_after: int | None) -> dict[str, Any] | None:
        """Train epoch by epoch from wherever the run stands; the metrics, or None if stopped early."""
        self.state = self._resume_or_start()  # after prepare_method: flat buffers must exist first
        cfg, state = self.cfg, self.state
        epochs_run = 0
        self.memory.start()
        try:
            with self.fast.session():
                while state.epoch < cfg.epochs:
                    epoch = state.epoch  # 0-based: the epoch about to run
                    # 1. one pass over the training split (timed and synchronised; evaluation excluded)
                    row = self._train_epoch(epoch)
                    # 2. a non-finite training loss ends the run as diverged: its model is not evaluated
                    row["diverged"] = not math.isfinite(row["train_loss"])
                    # 3. validation accuracy after the epoch (and test accuracy, for curves)
                    if not row["diverged"]:
                        row |= self._evaluate_epoch(epoch + 1)
                    # 4. record: history, best-validation weights, log line, checkpoint
                    self._record_epoch(row)
                    epochs_run += 1
                    if row["diverged"]:
                        break
                    # 5. an interruption may end this process here; the same command resumes
                    if stop_after is not None and epochs_run >= stop_after and state.epoch < cfg.epochs:
                        return None
                # 6. final numbers: the last model on val/test, the best-validation weights on test (one
                #    eval set, test_is_val: the epochs' validation scores, without evaluating again)
                return self._finish()
        finally:
            self.memory.stop()

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        self.model.train()
        totals = _EpochTotals(self.method.trace_keys)
        self.backend.stats()  # reset backend counters
        watch = Stopwatch(self.device)
        with watch:
            self.method.start_epoch(epoch, self.cfg.epochs, self.steps_per_epoch)
            batches = self._train_batches(epoch)
            for step, (inputs, targets, indices) in enumerate(batches):
                self._set_lr(epoch, step)
                inputs = self.fast.prepare_batch(inputs)
                totals.add(self.step(*self.backend.shard(inputs, targets, indices)))
                if step == 0:
                    kill_point(f"epoch{epoch + 1}:step")
        return {
            "epoch": epoch + 1,
            "lr": lr_at(self.cfg, epoch, 0, self.steps_per_epoch),
            **totals.summary(self.backend.sum_over_replicas),
            "epoch_time_s": watch.seconds,
            **{f"backend_{k}": v for k, v in self.backend.stats().items()},
        }

    def _set_lr(self, epoch: int, step: int) -> None:
        if step == 0 or SCHEDULE_FACTORS[self.cfg.schedule][1]:
            lr = lr_at(self.cfg, epoch, step, self.steps_per_epoch)
            for group in self.method.base_optimizer.param_groups:
                group["lr"] = lr

    def _evaluate_epoch(self, epoch: int) -> dict[str, Any]:
        watch = Stopwatch(self.device)
        with watch:
            self.backend.check_replicas(self.model, epoch)
            self.backend.before_eval(self.model)
            val = self._evaluate(self.model, "val")
            out = _prefixed("val", val)
            if self.cfg.test_every_epoch:
                test = val if test_is_val(self.cfg) else self._evaluate(self.model, "test")
                out |= _prefixed("test", test)
        out["eval_time_s"] = watch.seconds
        return out

    def _record_epoch(self, row: dict[str, Any]) -> None:
        state = self.state
        state.epoch += 1
        state.history.append(_json_safe(row))
        score = None if row["diverged"] else row[selection_key(self.cfg)]
        improved = score is not None and score > state.best_val_score
        if improved:
            state.best_val_score, state.best_epoch = score, row["epoch"]
        state.memory = self.memory.report(state.memory)
        memory_per_process = self.backend.gather(state.memory)
        if self.backend.is_writer:
            checkpoint = {
                "model": self.model.state_dict(),
                "method": self.method.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": device_rng_state(self.device),
                "engine": dataclasses.replace(
                    state,
                    memory=memory_per_process[0] if len(memory_per_process) == 1 else memory_per_process,
                ).to_dict(),
            }
            best = self.model.state_dict() if improved else None
            self.run_dir.save_epoch(state.epoch, state.history, checkpoint, best)
        if self.log_progress:
            print(_progress_line(self.cfg, row, state), file=sys.stderr, flush=True)

    def _finish(self) -> dict[str, Any]:
        memory = self._gathered_memory()  # every process: also waits until best.pt is written
        final_val = final_test = best_test = None
        history = self.state.history
        if not history[-1]["diverged"]:
            kill_point("final:eval")
            final_val = _scores(history[-1], "val")  # the last model, as its epoch evaluated it
            if test_is_val(self.cfg):  # one eval set: the scores are known, no second pass
                final_test = final_val
                best_test = self._best_epoch_val()
            else:
                self.backend.before_eval(self.model)
                final_test = self._evaluate(self.model, "test")
                best_test = self._best_checkpoint_test()
        metrics = build_metrics(self.cfg, self.state, final_val, final_test, best_test, self.steps_per_epoch)
        metrics["provenance"] = provenance([self.device]) | {"resumes": self.state.resumes}
        metrics["backend"] = {
            "name": type(self.backend).__name__,
            "world_size": self.backend.world_size,
            "executor": type(self.backend.executor).__name__,
            **self.backend.describe(),
            **_backend_time(self.state.history, metrics["time"]["train_total_s"]),
        }
        metrics["memory"] = memory
        metrics = _json_safe(metrics)
        if self.backend.is_writer:
            self.run_dir.finish(self.state.history, metrics)
        return metrics

    def _best_epoch_val(self) -> dict[str, Any] | None:
        """The validation scores the best epoch recorded (None if no epoch improved)."""
        best = self.state.best_epoch
        return _scores(self.state.history[best - 1], "val") if best else None

    def _best_checkpoint_test(self) -> dict[str, float] | None:
        present = self.backend.gather(self.run_dir.best.exists())  # every rank evaluates its share
        if self.state.best_epoch == 0 or not present[0]:
            return None
        if not all(present):
            missing = [rank for rank, seen in enumerate(present) if not seen]
            raise RunError(f"rank(s) {missing} cannot see {self.run_dir.best}: the run directory must be "
                           "shared by all ranks")  # fmt: skip
        best_model = self._new_model().to(self.device)
        best_model.load_state_dict(self.run_dir.load_best(self.device))
        return self._evaluate(best_model, "test")

    def _gathered_memory(self) -> dict[str, Any]:
        reports = self.backend.gather(self.memory.report(self.state.memory))
        if len(reports) == 1:
            return reports[0]
        return {"per_rank": reports}


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


def device_rng_state(device: torch.device) -> Tensor | None:
    """The state of ``device``'s CUDA generator, which a model's dropout draws from on a GPU (None on a
    CPU: the CPU generator's state is ``torch_rng``)."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def restore_device_rng_state(device: torch.device, state: Tensor | None) -> None:
    """Put back :func:`device_rng_state` on a resumed run (nothing without a saved state or a GPU)."""
    if device.type == "cuda" and state is not None:
        torch.cuda.set_rng_state(state.cpu(), device)


def evaluate_sharded(
    model: nn.Module, data: Dataset | Source, split: str, batch_size: int, backend: Backend
) -> dict[str, float]:
    """The scores of :func:`evaluate` (a dataset's ``split``) or ``Source.evaluate`` (a source's eval
    set), with each process evaluating only its slice of the rows (``Backend.eval_rows``).

    The per-sample results of every process are gathered and scored in eval-set order, so every process
    gets the same metrics, those of one process evaluating every row: counts (accuracies, predictions)
    exactly, losses up to the round-off of computing a row's logits in a batch of other rows.
    """
    rows = backend.eval_rows
    if isinstance(data, Dataset):
        part = eval_columns(model, data, split, batch_size, rows)
        return topk_scores(merge_columns(backend.gather(part)), ks=(1,))
    part = data.eval_columns(model, batch_size, rows)
    return data.scores(merge_columns(backend.gather(part)))


def evaluate(model: nn.Module, data: Dataset, split: str, batch_size: int) -> dict[str, float]:
    """Mean cross-entropy (no smoothing) and accuracy on a split, in eval mode."""
    return topk_scores(eval_columns(model, data, split, batch_size), ks=(1,))


def eval_columns(
    model: nn.Module, data: Dataset, split: str, batch_size: int, rows: Callable[[int], slice] | None = None
) -> Columns:
    """Per-sample cross-entropy and top-1 hits (``sampa.metrics.scores.topk_columns``) of the rows of
    ``split`` at ``rows(len(split))`` (default: all)."""
    n = len(data.split(split))
    part = rows(n) if rows else slice(0, n)
    indices = torch.arange(n)[part].split(batch_size)
    batches = eval_batches(data, split, batch_size, part=part)
    return topk_columns(model, ((x, y, i) for (x, y), i in zip(batches, indices, strict=True)), ks=(1,))


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
    final_val: dict[str, float] | None,
    final_test: dict[str, float] | None,
    best_test: dict[str, float] | None,
    steps_per_epoch: int,
) -> dict[str, Any]:
    """The final ``metrics.json`` content (before provenance/backend/memory are attached). A diverged
    run (its last epoch's loss not finite) has status, epochs and times, and null results."""
    rows = state.history
    diverged = bool(rows[-1]["diverged"])
    times = [r["epoch_time_s"] for r in rows]
    steady = times[1:] if len(times) > 1 else times
    best_row = rows[state.best_epoch - 1] if state.best_epoch else {}
    task = bool(task_metric_names(cfg.dataset))
    results = {
        "best_epoch": state.best_epoch or None,
        "best_val_acc": best_row.get("val_acc"),  # plain accuracy (None for regression)
        "best_val_task_score": best_row.get("val_task_score") if task else None,
        "test_acc": best_test["acc"] if best_test else None,  # the paper's number: best-validation weights
        "test_loss": best_test["loss"] if best_test else None,
        "test_top5_acc": best_test.get("top5_acc") if best_test else None,  # ImageNet
        "test_task_metrics": _task_metrics(cfg, best_test),  # text: the task's metric(s)
        "test_task_score": best_test["task_score"] if task and best_test else None,
        "final_val_acc": final_val["acc"] if final_val else None,
        "final_val_loss": final_val["loss"] if final_val else None,
        "final_test_acc": final_test["acc"] if final_test else None,
        "final_test_loss": final_test["loss"] if final_test else None,
        "final_train_loss": rows[-1]["train_loss"],
        "final_train_acc": rows[-1]["train_acc"],
    }
    if diverged:
        results = dict.fromkeys(results)
    return {
        "metrics_version": METRICS_VERSION,  # every score a fraction
        "status": "diverged" if diverged else "complete",
        "diverged": diverged,
        "diverged_epoch": rows[-1]["epoch"] if diverged else None,
        "epochs": cfg.epochs,
        "epochs_completed": state.epoch,
        "test_is_val": test_is_val(cfg),
        **results,
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


def _task_metrics(cfg: RunConfig, scores: dict[str, Any] | None) -> dict[str, float] | None:
    """A text task's metrics (fractions), e.g. ``{"acc": 0.865, "f1": 0.905}`` (MRPC); None otherwise."""
    names = task_metric_names(cfg.dataset)
    if scores is None or not names:
        return None
    return {name: scores[name] for name in names}


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


def _scores(row: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The scores a log row holds under ``prefix`` (``val_acc`` -> ``acc``); inverse of :func:`_prefixed`."""
    return {k.removeprefix(f"{prefix}_"): v for k, v in row.items() if k.startswith(f"{prefix}_")}


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
    key = selection_key(cfg)
    val = "val" if key == "val_acc" else "val score"
    return (
        f"{head} loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}% | "
        f"{val} {100 * row[key]:.2f}% (best {100 * state.best_val_score:.2f}% @ {state.best_epoch}) | "
        f"{row['epoch_time_s']:.2f} s train | lr {row['lr']:.4g}"
    )
