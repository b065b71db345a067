"""Command line of the presentation side: ``python -m sampa plan|aggregate|table|figure|scorecard``.

These commands read configs and run directories and write tables and figures; they never train.
A spec (``--spec``) is one experiment resolved by the workflow (``sampa.experiments.resolve``);
by hand, ``--config FILE --experiment ID`` gives the same. Bad input is one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sampa.experiments import PlannedRun

DEFAULT_RUNS_ROOT = "results/runs"


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``prog: error: message``, exit 2); the usage
    block is shown by ``--help`` only. Its subcommands' parsers are of this class too."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse_command(self, argv: Sequence[str] | None) -> argparse.Namespace:
        """Parse; unknown arguments are reported by the subcommand they were given to."""
        args, unknown = self.parse_known_args(argv)
        if unknown:
            self.exit(2, f"{self.prog} {args.command}: error: unrecognized arguments: {' '.join(unknown)}\n")
        return args


def main(argv: list[str] | None = None) -> int:
    """The presentation commands alone (``python -m sampa aggregate`` starts here, without torch)."""
    parser = OneLineParser(prog="sampa", description="sampa-bench presentation commands")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_command(argv)
    return args.handler(args)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    _add_plan(sub)
    _add_aggregate(sub)
    _add_table(sub)
    _add_figure(sub)
    _add_scorecard(sub)


def _spec_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", help="resolved experiment as JSON (what the workflow passes)")
    p.add_argument("--config", help="workflow config (configs/*.yaml), with --experiment")
    p.add_argument("--experiment", help="experiment id in --config")


def _run_dirs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "run_dirs",
        nargs="*",
        metavar="RUN",
        help="run directories (or files inside them, e.g. outcome.json): the runs table is read from them",
    )
    p.add_argument("--runs-root", default=DEFAULT_RUNS_ROOT, help="run ids are paths relative to this")


def _runs(args: argparse.Namespace, flag: str, run_dirs: list[str]) -> Any:
    """The runs table: read from ``run_dirs`` (:func:`_experiment_run_dirs`: the workflow's way, no
    aggregate job), else the CSV that ``flag`` names."""
    from sampa.experiments import PlanError
    from sampa.report.runs import runs_table

    if args.run_dirs:
        return runs_table(run_dirs, args.runs_root)
    path = getattr(args, flag.removeprefix("--"))
    if not path:
        raise PlanError(f"give run directories or {flag} (the runs table from python -m sampa aggregate)")
    return _runs_table(path, flag)


def _experiment_run_dirs(
    args: argparse.Namespace, spec: dict[str, Any], flag: str, runs: list[PlannedRun] | None
) -> list[str]:
    """Those of the run directories given that are runs of the experiment (``runs``, expanded here when
    None; planned here or not; an absent one is a missing run). None of them: one-line error naming the
    first and what a run path of the experiment looks like. Some not: one line on stderr says how many
    are ignored."""
    from sampa.experiments import PlanError, expand_experiment
    from sampa.report.runs import run_id

    if args.run_dirs and getattr(args, flag.removeprefix("--")):
        raise PlanError(f"give run directories or {flag}, not both")
    given = list(dict.fromkeys(args.run_dirs))
    _check_run_dirs(given)
    if given and runs is None:
        runs = expand_experiment(spec)
    planned = list(dict.fromkeys(run.path for run in runs)) if given else []
    known = set(planned)
    ours = [path for path in given if run_id(path, args.runs_root) in known]
    if len(ours) == len(given):
        return ours
    first = next(path for path in given if path not in ours)
    where = f"experiment {spec['id']!r}"
    if not ours:
        looks = "it plans no runs"
        if planned:
            looks = f"its runs are under --runs-root, e.g. {Path(args.runs_root, planned[0]).as_posix()!r}"
        raise PlanError(f"RUN {first!r} is not a run of {where} (nor is any RUN given); {looks}")
    print(
        f"sampa {spec['kind']}: warning: ignored {len(given) - len(ours)} of {len(given)} RUN paths that "
        f"are not runs of {where} (first: {first!r})",
        file=sys.stderr,
    )
    return ours


def _check_run_dirs(paths: list[str]) -> None:
    """Each RUN is a run directory or a file inside one (absent: a missing run), never another file."""
    from sampa.experiments import PlanError
    from sampa.report.runs import run_dir_of

    for path in paths:
        run_dir = run_dir_of(path)
        if run_dir.exists() and not run_dir.is_dir():
            raise PlanError(f"RUN {path!r} is a file, not a run directory (nor a file inside one)")


def _spec(args: argparse.Namespace) -> tuple[dict[str, Any], list[PlannedRun] | None]:
    """The experiment of ``--spec`` (checked) or of ``--config`` and ``--experiment`` (resolved), and its
    runs (:func:`sampa.experiments.expand_experiment`, once for the whole command; None when a spec says
    ``not_run``)."""
    from sampa.experiments import (
        PlanError,
        check_schema,
        check_spec,
        expand_experiment,
        load_config,
        mark_requirements,
        resolve,
    )

    if args.spec is not None and (args.config is not None or args.experiment is not None):
        raise PlanError("give --spec, or --config and --experiment, not both")
    if args.spec:
        spec = _json_mapping(args.spec, "--spec")
        if not isinstance(spec.get("kind"), str) or not isinstance(spec.get("id"), str):
            raise PlanError("--spec must be a resolved experiment (a JSON object with 'id' and 'kind')")
        return spec, check_spec(spec, "--spec")
    if not (args.config and args.experiment):
        raise PlanError("give --spec, or --config and --experiment")
    config = load_config(args.config)
    check_schema(config)
    if args.experiment not in config["experiments"]:
        raise PlanError(
            f"unknown experiment {args.experiment!r}; choose one of: {', '.join(config['experiments'])}"
        )
    spec = resolve(config, args.experiment)
    runs = expand_experiment(spec)
    mark_requirements(spec, runs)  # as the workflow's plan says it
    return spec, runs


def _run(command: str, handler: Any, args: argparse.Namespace) -> int:
    """``handler(args)`` once its outputs are checked, its errors one line each (``io.command_status``)."""
    from sampa import io

    def call() -> int:
        _check_outputs(args)
        return handler(args)

    return io.command_status(command, call, _input_errors)


#: flags that name files a command writes
_OUTPUT_FLAGS = ("out", "epochs_out", "md", "tex", "csv", "pdf", "png")


def _check_outputs(args: argparse.Namespace) -> None:
    """Every output is a file path: not empty, not an existing directory, not under a file (checked
    before any work)."""
    from sampa import io
    from sampa.experiments import PlanError

    seen: dict[Path, str] = {}
    for name in _OUTPUT_FLAGS:
        path = getattr(args, name, None)
        if path is None:
            continue
        flag = "--" + name.replace("_", "-")
        if not path.strip():
            raise PlanError(f"{flag} is empty; give a file path")
        if Path(path).is_dir():
            raise PlanError(f"{flag} {path!r} is a directory; give a file path")
        io.check_not_under_file(path, flag, PlanError)
        other = seen.setdefault(Path(path).resolve(), flag)
        if other != flag:
            raise PlanError(f"{other} and {flag} name the same file {path!r}; give each its own")


def _json_mapping(text: str, flag: str) -> dict[str, Any]:
    """A JSON object given on the command line (``--spec``, ``--specs``)."""
    from sampa.experiments import PlanError

    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise PlanError(f"{flag} is not valid JSON: {err.msg} (column {err.colno})") from None
    if not isinstance(value, dict):
        raise PlanError(f"{flag} must be a JSON object (got {type(value).__name__})")
    return value


def _runs_table(path: str | None, flag: str = "--runs") -> Any:
    """The runs table of ``python -m sampa aggregate``; one-line error if it is missing or is not one."""
    from sampa.experiments import PlanError

    if not path:
        raise PlanError(f"{flag} is required (the runs table from python -m sampa aggregate)")
    runs = _read_csv(path, flag)
    if "run" not in runs.columns:
        raise PlanError(f"{flag} {path!r} has no 'run' column; give the table of python -m sampa aggregate")
    return runs


#: the columns read from the toy's CSV files (``python -m sampa toy --out``, ``--summary``)
TOY_TRAJECTORIES = ("method", "step", "distance")
TOY_SUMMARY = ("method", "tail_mean_distance", "threshold", "converged")


def _toy_csv(path: str, flag: str, columns: Sequence[str], made_by: str) -> Any:
    """A CSV file of ``python -m sampa toy``, with the ``columns`` its reader uses."""
    from sampa.experiments import PlanError

    frame = _read_csv(path, flag)
    lacking = [c for c in columns if c not in frame.columns]
    if lacking:
        raise PlanError(f"{flag} {path!r} has no {lacking[0]!r} column; give the CSV of {made_by}")
    return frame


def _read_csv(path: str, flag: str) -> Any:
    """A CSV table; one-line error if it is missing or is not one."""
    import pandas as pd

    from sampa.experiments import PlanError

    if not Path(path).is_file():
        raise PlanError(f"{flag} {path!r} does not exist or is not a file")
    try:
        return pd.read_csv(path)
    except (ValueError, UnicodeDecodeError) as err:  # empty, or not CSV
        raise PlanError(f"{flag} {path!r} is not a CSV table ({str(err).splitlines()[0]})") from None


def _input_errors() -> tuple[type[Exception], ...]:
    """Errors that mean bad input (imported only when an error occurs: aggregate runs without torch)."""
    from sampa.config import ConfigError
    from sampa.experiments import PlanError
    from sampa.report.figures import FigureError
    from sampa.report.metrics import MetricError
    from sampa.report.tables import TableError

    return (ConfigError, PlanError, TableError, FigureError, MetricError)


# ----------------------------------------------------------------------------------------------
# plan


def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="list the runs a workflow config plans (validates every run)")
    p.add_argument("--config", required=True, help="workflow config (configs/*.yaml)")
    p.add_argument("--out", help="CSV file with one row per experiment and run")
    p.set_defaults(handler=lambda a: _run("plan", _plan, a))


def _plan(args: argparse.Namespace) -> int:
    import pandas as pd

    from sampa import io
    from sampa.experiments import load_config, partial_runs, plan

    result = plan(load_config(args.config))
    seen: set[str] = set()
    for name, spec in result.specs.items():
        runs = result.runs[name]
        new = [r for r in dict.fromkeys(r.path for r in runs) if r not in seen]
        seen.update(new)
        gpus = Counter(r.gpus(result.use_gpus) for r in runs)
        shown = ", ".join(f"{n} x {g}" for g, n in sorted(gpus.items()))
        if spec.get("not_run"):
            shown = f"not run: {spec['not_run']}"
        elif spec.get("needs"):
            shown += f"; partial: {partial_runs(spec, len(runs), result.sizes[name])}"
        print(f"{name:>14} {spec['kind']:<11} {len(runs):4d} runs, {len(new):4d} new, runs x GPUs: {shown}")
    print(f"{'total':>14} {'':<11} {len(seen):4d} distinct runs")
    if args.out:
        rows = [
            {
                "experiment": r.experiment,
                **{f"cell.{k}": v for k, v in r.cell.items()},
                "seed": r.seed,
                "run": r.path,
            }
            for runs in result.runs.values()
            for r in runs
        ]
        io.write_text(args.out, pd.DataFrame(rows).to_csv(index=False, lineterminator="\n"))
    return 0


# ----------------------------------------------------------------------------------------------
# aggregate


def _add_aggregate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("aggregate", help="tidy table of runs (one row per run directory)")
    p.add_argument("runs", nargs="*", help="run directories (or files inside them, e.g. metrics.json)")
    p.add_argument("--runs-root", default=DEFAULT_RUNS_ROOT, help="run ids are paths relative to this")
    p.add_argument("--out", required=True, help="CSV file (one row per run)")
    p.add_argument("--epochs-out", help="CSV file with one row per run and epoch (from log.jsonl)")
    p.set_defaults(handler=lambda a: _run("aggregate", _aggregate, a))


def _aggregate(args: argparse.Namespace) -> int:
    from sampa.experiments import PlanError
    from sampa.report.runs import collect_epochs, collect_runs, write_csv

    unmatched = next((run for run in args.runs if set("*?[") & set(run) and not Path(run).exists()), None)
    if unmatched is not None:  # an absent run is a missing run; this is none: the shell kept the pattern
        raise PlanError(f"RUN {unmatched!r} is a shell pattern that matched nothing (no run directory)")
    _check_run_dirs(args.runs)
    frame = collect_runs(args.runs, args.runs_root)
    write_csv(frame, args.out)
    if args.epochs_out:
        write_csv(collect_epochs(args.runs, args.runs_root), args.epochs_out)
    counts = Counter(frame["status"]) if len(frame) else Counter()
    print(f"{len(frame)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())), file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------------
# table


def _add_table(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("table", help="one paper table as Markdown, LaTeX and CSV")
    _spec_arguments(p)
    p.add_argument("--runs", help="runs table (python -m sampa aggregate), instead of run directories")
    _run_dirs_arguments(p)
    p.add_argument("--md", help="Markdown output")
    p.add_argument("--tex", help="LaTeX (booktabs) output")
    p.add_argument("--csv", help="CSV output (one row per cell)")
    p.set_defaults(handler=lambda a: _run("table", _table, a))


def _table(args: argparse.Namespace) -> int:
    from sampa import io
    from sampa.report.compare import compare
    from sampa.report.tables import TableError, cell_table, render, render_not_run

    spec, planned = _spec(args)
    if spec["kind"] != "table":
        raise TableError(f"experiment {spec['id']!r} is a {spec['kind']}, not a table")
    run_dirs = _experiment_run_dirs(args, spec, "--runs", planned)
    if spec.get("not_run"):  # what it needs is missing here (planned no runs)
        text = render_not_run(spec)
    else:
        runs = _runs(args, "--runs", run_dirs)
        cells = cell_table(spec, runs, planned)
        text = render(spec, cells, compare(spec, cells, runs, planned))
    for path, content in ((args.md, text.markdown), (args.tex, text.latex), (args.csv, text.csv)):
        if path:
            io.write_text(path, content)
    if not (args.md or args.tex or args.csv):
        print(text.markdown)
    return 0


# ----------------------------------------------------------------------------------------------
# figure


def _add_figure(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("figure", help="one paper figure as PDF + PNG, with its data as CSV")
    _spec_arguments(p)
    p.add_argument(
        "--data", help="the toy trajectories CSV (plot: toy), or a runs table instead of run directories"
    )
    _run_dirs_arguments(p)
    p.add_argument("--pdf", required=True, help="PDF output file (vector)")
    p.add_argument("--png", required=True, help="PNG output file (raster), a file other than --pdf")
    p.add_argument("--csv", help="CSV output: the plotted data")
    p.set_defaults(handler=lambda a: _run("figure", _figure, a))


def _figure(args: argparse.Namespace) -> int:
    from sampa.report.figures import FigureError, make_figure
    from sampa.report.runs import write_csv

    spec, planned = _spec(args)
    if spec["kind"] != "figure":
        raise FigureError(f"experiment {spec['id']!r} is a {spec['kind']}, not a figure")
    if spec["figure"]["plot"] != "toy":
        data = _runs(args, "--data", _experiment_run_dirs(args, spec, "--data", planned))
    elif args.run_dirs or not (args.data and Path(args.data).is_file()):
        raise FigureError(f"a toy figure is drawn from --data, its trajectories CSV (got {args.data!r})")
    else:
        data = _toy_csv(args.data, "--data", TOY_TRAJECTORIES, "python -m sampa toy --out")
    result = make_figure(spec, data, args.pdf, args.png, args.runs_root)
    if args.csv:
        write_csv(result.frame, args.csv)
    if result.missing:
        print(f"{len(result.missing)} runs missing: " + "; ".join(result.missing), file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------------
# scorecard


def _add_scorecard(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "scorecard", help="the paper's claims with our evidence and a verdict (Markdown, LaTeX)"
    )
    p.add_argument("--specs", help="every resolved experiment as JSON {id: spec} (what the workflow passes)")
    p.add_argument("--config", help="workflow config (configs/*.yaml) instead of --specs")
    p.add_argument("--runs", required=True, help="runs table (python -m sampa aggregate)")
    p.add_argument("--toy", help="toy summary of Figure 1 (python -m sampa toy --summary)")
    p.add_argument("--runs-root", default=DEFAULT_RUNS_ROOT, help="run directories (Figure 4 logs)")
    p.add_argument("--md", help="Markdown output (default: printed)")
    p.add_argument("--tex", help="LaTeX output")
    p.set_defaults(handler=lambda a: _run("scorecard", _scorecard, a))


def _scorecard(args: argparse.Namespace) -> int:
    from sampa import io
    from sampa.experiments import PlanError, check_spec, load_config, plan
    from sampa.report.scorecard import Inputs, scorecard
    from sampa.report.scorecard_text import render_latex, render_markdown

    if args.specs:
        specs = _json_mapping(args.specs, "--specs")
        if not all(isinstance(v, dict) for v in specs.values()):
            raise PlanError("--specs must map experiment ids to resolved experiments (JSON objects)")
        for name, spec in specs.items():
            check_spec(spec, f"--specs {name!r}")
    elif args.config:
        specs = plan(load_config(args.config)).specs
    else:
        raise PlanError("give --specs or --config")
    runs = _runs_table(args.runs)
    toy = _toy_csv(args.toy, "--toy", TOY_SUMMARY, "python -m sampa toy --summary") if args.toy else None
    inputs = Inputs(specs, runs, toy, Path(args.runs_root))
    card = scorecard(inputs)
    if args.md:
        io.write_text(args.md, render_markdown(card))
    if args.tex:
        io.write_text(args.tex, render_latex(card))
    if not (args.md or args.tex):
        print(render_markdown(card))
    return 0
