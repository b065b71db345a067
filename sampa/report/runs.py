"""Read run directories into tidy tables (one row per run, or per run and epoch). Never trains.

A run directory's ``metrics.json`` is written last and atomically, so its presence means the run
finished (``status`` ``complete`` or ``diverged``). A directory without it is reported with the
status its workflow job recorded in ``outcome.json`` (``failed``, ``needs data``; see
:mod:`sampa.jobs`), else as ``incomplete`` (a checkpoint exists: interrupted or still running) or
``missing``. A damaged ``metrics.json`` is skipped with a warning and the run reported ``missing``.
Such runs are rows of the table too, never silently dropped.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from io import StringIO
from pathlib import Path
from typing import Any

import pandas as pd

from sampa.rundir import FINISHED, in_fractions

#: identity columns first, in this order
ID_COLUMNS = ("run", "status", "dataset", "model", "optimizer", "seed")
#: metrics.json sections handled separately (not flattened)
_SECTIONS = ("config", "provenance", "memory", "backend")


def run_dir_of(path: str | os.PathLike) -> Path:
    """A run directory from the directory itself or a file inside it (e.g. its metrics.json)."""
    path = Path(path)
    return path.parent if path.suffix else path


def run_id(path: str | os.PathLike, runs_root: str | os.PathLike) -> str:
    """The id of the run at ``path`` (a run directory or a file inside it): its path relative to
    ``runs_root`` (the path itself when it is not under ``runs_root``), as the runs table's ``run``."""
    return _relative(run_dir_of(path), Path(runs_root))


def read_run(run_dir: Path, runs_root: Path) -> dict[str, Any]:
    """One flat row: identity, configuration, final metrics, timing, passes, memory, provenance."""
    row: dict[str, Any] = {"run": _relative(run_dir, runs_root)}
    outcome_path, metrics_path = run_dir / "outcome.json", run_dir / "metrics.json"
    outcome = _read_record(outcome_path)
    row |= _columns(outcome_path, lambda: flatten(outcome.get("shared") or {}, "shared."))
    metrics = _metrics_record(metrics_path)
    columns = _columns(metrics_path, lambda: _metrics_columns(metrics)) if metrics else {}
    if not columns:
        recorded = outcome.get("status") if outcome.get("status") in ("failed", "needs data") else None
        row["status"] = recorded or ("incomplete" if (run_dir / "checkpoint.pt").exists() else "missing")
        config_path = run_dir / "config.json"
        return row | _columns(config_path, lambda: _config_columns(_read_record(config_path)))
    return row | columns


def _metrics_columns(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {
        **_config_columns(metrics.get("config", {})),
        **flatten({k: v for k, v in metrics.items() if k not in _SECTIONS}),
        **memory_columns(metrics.get("memory", {})),
        **_provenance_columns(metrics.get("provenance", {}), metrics.get("backend", {})),
    }


def _columns(path: Path, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``build()``: the columns of the JSON record at ``path``; {} with a one-line warning when the
    record has an unexpected shape (a section that is not a mapping, a list where a number belongs)."""
    try:
        return build()
    except (AttributeError, TypeError, ValueError, KeyError, IndexError) as err:
        cause = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:100]
        _warn(f"{path} is damaged ({cause}): skipped; delete it to train the run again")
        return {}


def collect_runs(run_dirs: Iterable[str | os.PathLike], runs_root: str | os.PathLike) -> pd.DataFrame:
    """The tidy runs table, sorted by run path, columns in a fixed order (byte-stable CSV)."""
    root = Path(runs_root)
    rows = [read_run(run_dir_of(d), root) for d in run_dirs]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=list(ID_COLUMNS))
    frame = frame.drop_duplicates("run").sort_values("run", kind="stable").reset_index(drop=True)
    return frame[_column_order(frame.columns)]


def runs_table(run_dirs: Iterable[str | os.PathLike], runs_root: str | os.PathLike) -> pd.DataFrame:
    """The runs table of these run directories as ``python -m sampa aggregate`` writes it and a table
    command reads it back (same values and types: a table made from run directories is byte-equal to
    one made from the aggregated CSV)."""
    csv = collect_runs(run_dirs, runs_root).to_csv(index=False, lineterminator="\n")
    return pd.read_csv(StringIO(csv))


def collect_epochs(run_dirs: Iterable[str | os.PathLike], runs_root: str | os.PathLike) -> pd.DataFrame:
    """One row per run and finished epoch from ``log.jsonl`` (method statistics as ``stats.<k>.mean``)."""
    root = Path(runs_root)
    rows = []
    for d in run_dirs:
        run_dir = run_dir_of(d)
        log = run_dir / "log.jsonl"
        if not log.exists():
            continue
        run = _relative(run_dir, root)
        rows += [{"run": run, **row} for row in _log_rows(log)]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["run", "epoch"])
    frame = frame.sort_values(["run", "epoch"], kind="stable").reset_index(drop=True)
    return frame[["run", "epoch", *sorted(c for c in frame.columns if c not in ("run", "epoch"))]]


def _log_rows(log: Path) -> list[dict[str, Any]]:
    """The flattened epoch lines of ``log.jsonl``; none, with a one-line warning, if it is damaged."""
    try:
        lines = log.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        _warn(f"{log} is damaged ({type(err).__name__}): its epochs are skipped")
        return []
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if (
            not isinstance(row, dict)
            or isinstance(row.get("epoch"), bool)
            or not isinstance(row.get("epoch"), int)
        ):
            what = "not a JSON object" if not isinstance(row, dict) else "no integer 'epoch'"
            _warn(f"{log} is damaged (line {number}: {what}): its epochs are skipped")
            return []
        rows.append(flatten(row))
    return rows


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> dotted keys; only scalars are kept (lists such as traces are skipped)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= flatten(value, f"{name}.")
        elif value is None or isinstance(value, bool | int | float | str):
            out[name] = value
    return out


def memory_columns(memory: Mapping[str, Any]) -> dict[str, Any]:
    """Peak memory per device (max over devices and ranks) and where the number comes from.

    GPU: NVML's peak for this process where available, else the allocator's reserved peak. CPU runs
    have no device memory; their peak resident set size is reported as ``memory.cpu_peak_rss_mib``.
    """
    reports = memory.get("per_rank") or [memory]
    peak, source = None, None
    for report in reports:
        for device in report.get("devices", []):
            value, how = _device_peak(device)
            if value is not None and (peak is None or value > peak):
                peak, source = value, how
    rss = [r.get("cpu_peak_rss_mib") for r in reports if r.get("cpu_peak_rss_mib") is not None]
    return {
        "memory.device_peak_mib": peak,
        "memory.device_source": source,
        "memory.cpu_peak_rss_mib": max(rss) if rss else None,
        "memory.ranks": len(reports),
    }


def _device_peak(device: Mapping[str, Any]) -> tuple[float | None, str | None]:
    if device.get("nvml_peak_mib"):
        return float(device["nvml_peak_mib"]), f"nvml {device.get('nvml_method', '')}".strip()
    if device.get("torch_max_reserved_mib") is not None:
        return float(device["torch_max_reserved_mib"]), "torch max_memory_reserved"
    return None, None


def _config_columns(config: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in config.items() if k != "hparams" and not isinstance(v, list | dict)}
    for key, value in config.items():
        if isinstance(value, list):
            out[key] = "+".join(str(v) for v in value)
    out |= {f"hparams.{k}": v for k, v in (config.get("hparams") or {}).items()}
    return {k if k in ID_COLUMNS or k.startswith("hparams.") else f"config.{k}": v for k, v in out.items()}


def _provenance_columns(provenance: Mapping[str, Any], backend: Mapping[str, Any]) -> dict[str, Any]:
    devices = provenance.get("devices") or [{}]
    git = provenance.get("git") or {}
    return {
        "provenance.git_sha": git.get("sha"),
        "provenance.git_dirty": git.get("dirty"),
        "provenance.device_name": devices[0].get("name"),
        "provenance.torch": (provenance.get("packages") or {}).get("torch"),
        "provenance.resumes": provenance.get("resumes"),
        **flatten(backend, "backend."),  # two devices: communication and compute seconds, their share
    }


def timing_caveats(runs: pd.DataFrame, paths: Iterable[str]) -> list[str]:
    """What may bias the time and memory of these runs: mixed GPU models or code commits, uncommitted
    changes, other training jobs on the machine (one line, or none)."""
    if "run" not in runs.columns:
        return []
    rows = runs[runs["run"].isin(set(paths))]
    found = []
    for column, what in (("provenance.device_name", "devices"), ("provenance.git_sha", "code commits")):
        counts = rows[column].dropna().value_counts() if column in rows else pd.Series(dtype=int)
        if len(counts) > 1:
            each = ", ".join(f"{value}: {n} runs" for value, n in counts.items())
            found.append(f"{len(counts)} {what} ({each})")
    for column, what in (
        ("provenance.git_dirty", "from a checkout with uncommitted changes"),
        ("shared.other_training_jobs_max", "beside other training jobs"),
    ):
        if column in rows:
            n = int((pd.to_numeric(rows[column], errors="coerce").fillna(0) > 0).sum())
            if n:
                found.append(f"{n} runs {what}")
    return [f"Caution, times and memory of runs: {'; '.join(found)}."] if found else []


def _column_order(columns: Iterable[str]) -> list[str]:
    columns = list(columns)
    head = [c for c in ID_COLUMNS if c in columns]
    groups = ("config.", "hparams.")
    grouped = [sorted(c for c in columns if c.startswith(g)) for g in groups]
    rest = sorted(c for c in columns if c not in head and not c.startswith(groups))
    return head + [c for g in grouped for c in g] + rest


def _relative(run_dir: Path, root: Path) -> str:
    try:
        return run_dir.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return run_dir.as_posix()


def _read_record(path: Path) -> dict[str, Any]:
    """A JSON object; {} if absent, and {} with a one-line warning if damaged."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        _warn(f"{path} is damaged ({type(err).__name__}): skipped; delete it to train the run again")
        return {}
    if not isinstance(data, dict):
        _warn(f"{path} is damaged (not a JSON object): skipped; delete it to train the run again")
        return {}
    return data


def _metrics_record(path: Path) -> dict[str, Any]:
    """A run's metrics.json with every score a fraction (older records' percentages converted); {} if
    absent, and {} with a one-line warning if damaged or written by a newer version."""
    metrics = _read_record(path)
    if metrics and metrics.get("status") not in FINISHED:
        what = f"status {metrics['status']!r}" if "status" in metrics else "no 'status'"
        _warn(f"{path} is damaged ({what}): skipped; delete it to train the run again")
        return {}
    try:
        return in_fractions(metrics) if metrics else {}
    except ValueError as err:  # a newer version's record
        _warn(f"{path}: {err}: skipped")
    except TypeError:  # a version-1 score in percent that is not a number
        _warn(f"{path} is damaged (a score is not a number): skipped; delete it to train the run again")
    return {}


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Atomic, byte-stable CSV (floats with full precision, no index)."""
    from sampa import io

    io.write_text(path, frame.to_csv(index=False, lineterminator="\n"))
