"""A run directory on disk: its files, its lock, its three states, and every write to it.

Files (deterministic names, no timestamps):

* ``config.json``     the resolved configuration (written first; a restart must match it)
* ``log.jsonl``       one line per finished epoch (rewritten atomically from the engine's history)
* ``checkpoint.pt``   model + method + engine state after the last finished epoch
* ``best.pt``         model weights of the best validation epoch
* ``metrics.json``    final results + provenance (keys: :data:`METRICS_KEYS`)

States: *in progress* (no ``metrics.json``; a checkpoint to resume from, or nothing yet: a new run that
raises before its first epoch is recorded removes its ``config.json``, :meth:`RunDir.discard_unstarted`),
*complete* or *diverged* (``metrics.json`` with that ``status``, every epoch line, no checkpoint, no
temporary files). Each epoch writes ``best.pt`` (if improved), then ``log.jsonl``, then
``checkpoint.pt``; the end writes ``log.jsonl``, then ``metrics.json``, then removes the checkpoint.
A restart repairs whatever a kill between two writes left: the log is rewritten from the
checkpoint, stale temporary files are removed, a leftover checkpoint beside ``metrics.json`` is
removed. Every file is written atomically (:mod:`sampa.io`). Importing this module does not import
torch (the report side reads ``metrics.json`` through :func:`read_metrics`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sampa import io
from sampa.faults import kill_point

#: metrics.json's format: 2 since every value is stored as a fraction (1, or no ``metrics_version``: the
#: text-task scores ``PERCENT_KEYS_V1`` were in percent; :func:`read_metrics` converts them)
METRICS_VERSION = 2
PERCENT_KEYS_V1 = ("best_val_task_score", "test_task_metrics", "test_task_score")
#: metrics.json: what happened to the run
OUTCOME_KEYS = ("status", "diverged", "diverged_epoch", "epochs", "epochs_completed")
#: metrics.json: the results (all null for a diverged run: no numbers of a non-finite model)
RESULT_KEYS = (
    "best_epoch",
    "best_val_acc",  # plain accuracy at the best epoch (null for regression, STS-B)
    "best_val_task_score",  # text tasks: the selecting task score at the best epoch (null otherwise)
    "test_acc",  # the paper's number: the best-validation checkpoint on the test set (null for STS-B)
    "test_loss",
    "test_top5_acc",  # ImageNet (null otherwise)
    "test_task_metrics",  # text tasks: {metric: value}, GLUE's (mcc, acc, f1, ...) (null otherwise)
    "test_task_score",  # text tasks: mean of test_task_metrics, the task's GLUE score (null otherwise)
    "final_val_acc",
    "final_val_loss",
    "final_test_acc",
    "final_test_loss",
    "final_train_loss",
    "final_train_acc",
)
#: metrics.json: nested sections
SECTION_KEYS = ("time", "passes_per_step", "config", "provenance", "backend", "memory")
#: metrics.json: whether ``test_*`` are the validation scores of the best epoch, not a second evaluation
#: (datasets whose validation and test sets are one set: ImageNet's val/, GLUE's dev set)
PROTOCOL_KEYS = ("test_is_val",)
METRICS_KEYS = ("metrics_version", *OUTCOME_KEYS, *PROTOCOL_KEYS, *RESULT_KEYS, *SECTION_KEYS)
#: ``status`` of a finished run
FINISHED = ("complete", "diverged")


class RunError(RuntimeError):
    """A run cannot start or continue (message: one line)."""

    plain_message = True  # see one_line


def one_line(err: BaseException) -> str:
    """The error as a launcher reports it: our own one-line errors (classes with a true
    ``plain_message``, their subclasses too) by their message, as one device prints them; others with
    their type."""
    message = io.first_line(err, repr(err))
    return message if getattr(err, "plain_message", False) else f"{type(err).__name__}: {message}"


class DamagedFileError(RunError):
    """A run file cannot be read (message: one line naming the file and what to do)."""


def os_error_message(err: OSError) -> str:
    """One line with the path and the cause, e.g. "results/x/log.jsonl: No space left on device"."""
    path = err.filename or "(unknown path)"
    return f"{path}: {err.strerror or err}"


def metrics_record(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` as the content of metrics.json: exactly :data:`METRICS_KEYS`, in that order."""
    if set(values) != set(METRICS_KEYS):
        odd = sorted(set(values) ^ set(METRICS_KEYS))
        raise ValueError(f"metrics.json keys differ from METRICS_KEYS: {', '.join(odd)}")
    return {k: values[k] for k in METRICS_KEYS}


def read_metrics(path: str | os.PathLike) -> dict[str, Any]:
    """A finished run's ``metrics.json`` in the current units (:func:`in_fractions`);
    :class:`DamagedFileError` if it is not one."""
    path = Path(path)
    metrics = _read_json_file(path, f"delete {path.parent} to train this run again")
    missing = [k for k in OUTCOME_KEYS if k not in metrics]
    if missing or metrics["status"] not in FINISHED:
        what = f"no {missing[0]!r}" if missing else f"status {metrics['status']!r}"
        raise DamagedFileError(f"{path} is damaged ({what}); delete {path.parent} to train this run again")
    try:
        return in_fractions(metrics)
    except ValueError as err:
        raise DamagedFileError(f"{path}: {err}") from None


def in_fractions(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``metrics.json`` content with every score a fraction: a version-1 record's text-task scores
    (:data:`PERCENT_KEYS_V1`, in percent) divided by 100, and marked :data:`METRICS_VERSION`."""
    version = metrics.get("metrics_version", 1)
    if version == METRICS_VERSION:
        return dict(metrics)
    if version != 1:
        raise ValueError(f"metrics_version {version!r} is not one of 1, {METRICS_VERSION} (a newer "
                         "sampa-bench wrote it)")  # fmt: skip
    out = dict(metrics) | {"metrics_version": METRICS_VERSION}
    for key in PERCENT_KEYS_V1:
        if key in metrics:
            out[key] = _fraction(metrics[key])
    return out


def _fraction(percent: Any) -> Any:
    """A value (or a mapping of values) in percent as a fraction; None stays None."""
    if isinstance(percent, Mapping):
        return {k: _fraction(v) for k, v in percent.items()}
    return None if percent is None else percent / 100


def _read_json_file(path: Path, remedy: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes().decode())
    except OSError as err:
        raise RunError(f"cannot read {path}: {err.strerror}") from None
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
        cause = "empty" if not path.stat().st_size else f"not JSON: {str(err).splitlines()[0]}"
        raise DamagedFileError(f"{path} is damaged ({cause}); {remedy}") from None
    if not isinstance(data, dict):
        raise DamagedFileError(f"{path} is damaged (not a JSON object); {remedy}")
    return data


class RunDir:
    """The files of one run directory and the operations that keep it in one of its three states."""

    def __init__(self, root: str | os.PathLike) -> None:
        if not str(root).strip():
            raise RunError("the output directory is empty ('--out \"\"'); give the run's directory")
        self.root = Path(root)
        self.config = self.root / "config.json"
        self.log = self.root / "log.jsonl"
        self.checkpoint = self.root / "checkpoint.pt"
        self.best = self.root / "best.pt"
        self.metrics = self.root / "metrics.json"
        self.lock = self.root / ".lock"
        self.made_root = False  # whether exclusive() created the directory

    # -- reading --------------------------------------------------------------------------------

    def finished_metrics(self) -> dict[str, Any] | None:
        """metrics.json of a finished run, or None while the run is in progress."""
        if self.root.exists() and not self.root.is_dir():
            raise RunError(f"{self.root} is not a directory; give a directory as the run's output")
        return read_metrics(self.metrics) if self.metrics.exists() else None

    def check_same_run(
        self, wanted: Mapping[str, Any], defaults: Mapping[str, Any], ignored: Sequence[str]
    ) -> None:
        """An existing directory must describe the same run (keys outside ``ignored`` equal; keys
        added since the directory was written mean their ``defaults``)."""
        if not self.config.exists():
            return
        remedy = f"delete {self.root} to train this run again"
        existing = dict(defaults) | _read_json_file(self.config, remedy)
        diff = sorted(
            k for k in set(existing) | set(wanted) if k not in ignored and existing.get(k) != wanted.get(k)
        )
        if diff:
            key = diff[0]
            raise RunError(
                f"{self.root} holds a different run ({key}: {existing.get(key)!r} there, "
                f"{wanted.get(key)!r} now); use another output directory or delete it"
            )

    def load_checkpoint(self, device: Any, keys: Sequence[str]) -> dict[str, Any] | None:
        """The checkpoint (None if there is none); :class:`DamagedFileError` if it cannot be used."""
        if not self.checkpoint.exists():
            return None
        try:
            ckpt = io.load_torch(self.checkpoint, device)
        except OSError as err:
            raise RunError(f"cannot read {self.checkpoint}: {err.strerror}") from None
        except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
            raise self.damaged(self.checkpoint, _first_line(err)) from None
        missing = [k for k in keys if not isinstance(ckpt, dict) or k not in ckpt]
        if missing:
            raise self.damaged(self.checkpoint, f"no {missing[0]!r}")
        return ckpt

    def load_best(self, device: Any) -> Any:
        try:
            return io.load_torch(self.best, device)
        except Exception as err:
            raise DamagedFileError(
                f"{self.best} is damaged ({_first_line(err)}); delete {self.root} to train this run again"
            ) from None

    def damaged(self, path: Path, cause: str) -> DamagedFileError:
        return DamagedFileError(f"{path} is damaged ({cause}); delete it to restart this run from scratch")

    # -- writing (the writer process only) ------------------------------------------------------

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold a lock on the run directory so two processes never write the same run."""
        try:
            self.made_root = not self.root.exists()
            self.root.mkdir(parents=True, exist_ok=True)
            handle = open(self.lock, "w")  # noqa: SIM115 (held for the whole block)
        except OSError as err:
            raise RunError(os_error_message(err)) from None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunError(f"another process is already training into {self.root}") from None
            yield

    def begin(self, config: Mapping[str, Any]) -> None:
        """Start or restart (under the lock): remove stale temporary files, write config.json once."""
        for stale in io.stale_temp_files(self.root):
            stale.unlink(missing_ok=True)
        if not self.config.exists():
            io.write_json(self.config, config)

    def discard_unstarted(self) -> None:
        """After a new run failed before recording an epoch (under the lock): remove its config.json,
        lock and temporary files, and the directory if :meth:`exclusive` made it and nothing else is
        there, so a failed start leaves nothing that looks like a run."""
        if any(p.exists() for p in (self.log, self.checkpoint, self.best, self.metrics)):
            return
        for path in (self.config, *io.stale_temp_files(self.root), self.lock):
            with contextlib.suppress(OSError):  # the run's own error is the one to report
                path.unlink(missing_ok=True)
        if self.made_root:
            with contextlib.suppress(OSError):  # not empty: something else lives there
                self.root.rmdir()

    def save_epoch(
        self, epoch: int, history: list[dict[str, Any]], checkpoint: Any, best: Any | None
    ) -> None:
        """After an epoch: best weights (if improved), the log, then the checkpoint."""
        if best is not None:
            io.save_torch(self.best, best)
            kill_point(f"epoch{epoch}:best")
        self.write_log(history)
        kill_point(f"epoch{epoch}:log")
        io.save_torch(self.checkpoint, checkpoint)
        kill_point(f"epoch{epoch}:checkpoint")

    def write_log(self, history: list[dict[str, Any]]) -> None:
        io.write_jsonl(self.log, history)

    def finish(self, history: list[dict[str, Any]], metrics: Mapping[str, Any]) -> None:
        """Complete the run: every epoch line, then metrics.json, then no checkpoint."""
        self.write_log(history)
        kill_point("final:log")
        io.write_json(self.metrics, metrics_record(metrics))
        kill_point("final:metrics")
        self.tidy()

    def tidy(self) -> None:
        """A finished run keeps no checkpoint and no temporary files."""
        self.checkpoint.unlink(missing_ok=True)
        for stale in io.stale_temp_files(self.root):
            stale.unlink(missing_ok=True)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    return line if len(line) <= 100 else line[:97] + "..."
