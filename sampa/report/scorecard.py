"""The reproduction scorecard: the SAMPa paper's claims, each with our evidence and a verdict.

Verdicts:

* *reproduced* / *not reproduced*: the claim's rule (below, and printed with each claim) holds / fails on
  our runs;
* *not run*: the experiment is not in this config, or some of its runs are missing, interrupted,
  diverged or stale (each is listed with its run path), or the runs lack the quantity the claim is about,
  or only some of its runs can run here (data, weights or extra missing: "partial: N of M runs here") and
  they do not decide the claim (they can refute a claim about every line, never confirm one);
* *not evidence (synthetic data)*: the runs used synthetic data (smoke profile); the numbers are shown,
  no verdict is given. The scorecard's first line then says so.

Every claim compares means over seeds. Where the paper says "about", the tolerance is a constant of
this module, stated in the output. The paper's own numbers (``sampa.report.paper``) are shown beside ours.
The scorecard also counts, per paper table, how many of the paper's cells were compared and how many are
*within* (:mod:`sampa.report.compare`). Reads run files only; never trains.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sampa.experiments import PlannedRun, expand_experiment, partial_runs, runnable
from sampa.paths import generated_data
from sampa.report import paper
from sampa.report.cells import axis_name, cell_table, observations
from sampa.report.compare import OUTSIDE, WITHIN, compare
from sampa.report.runs import collect_epochs

REPRODUCED, NOT_REPRODUCED, NOT_RUN = "reproduced", "not reproduced", "not run"
NOT_EVIDENCE = "not evidence (synthetic data)"
NOT_IN_CONFIG = "experiment not in this config"

#: claim 2: "about 0.58x" = SAMPa-0.2 / SAM time per epoch within 0.58 +- 0.10
TIME_RATIO_TARGET, TIME_RATIO_TOLERANCE = 0.58, 0.10
#: claim 5: the smallest cosine of any probed step must be at least this
COSINE_FLOOR = 0.99
#: claim 6: "no more memory" allows 2% above SAM (allocator and NVML granularity)
MEMORY_SLACK = 0.02
#: claim 8: "about 40% faster" = vSAM / SAM time per epoch in [0.50, 0.75] (0.60: 40% less time;
#: 0.71: 1.4x the speed); "comparable accuracy" = vSAM at most 0.3 pp below SAM
VSAM_TIME_RATIO = (0.50, 0.75)
VSAM_ACCURACY_DROP = 0.3


@dataclass(frozen=True)
class Inputs:
    """What the scorecard reads: the config's resolved experiments, the runs table, the toy summary
    (Figure 1) and the run directories (per-epoch logs of Figure 4)."""

    specs: Mapping[str, Mapping[str, Any]]
    runs: pd.DataFrame
    toy_summary: pd.DataFrame | None = None
    runs_root: Path = Path("results/runs")
    _expanded: dict[str, list[PlannedRun]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def expanded(self, spec: Mapping[str, Any]) -> list[PlannedRun]:
        """Every run of ``spec`` (one of :attr:`specs`), expanded once for all claims and tables."""
        if spec["id"] not in self._expanded:
            self._expanded[spec["id"]] = expand_experiment(spec)
        return self._expanded[spec["id"]]

    def planned(self, spec: Mapping[str, Any]) -> list[PlannedRun]:
        """The runs of ``spec`` that can run here (:func:`sampa.experiments.plan_experiment`)."""
        return runnable(spec, self.expanded(spec))

    def partial(self, spec: Mapping[str, Any]) -> str:
        """How many runs of ``spec`` (an experiment with ``needs``) can run here and what the rest needs."""
        return partial_runs(spec, len(self.planned(spec)), len(self.expanded(spec)))

    def experiment(self, ref: str) -> Mapping[str, Any] | None:
        """The experiment reproducing paper table/figure ``ref`` ("Table 7"), if the config has one."""
        return next((s for s in self.specs.values() if s.get("paper") == ref), None)

    @property
    def profile(self) -> str:
        return next((str(s.get("profile", "")) for s in self.specs.values()), "")

    @property
    def note(self) -> str:
        return next((str(s.get("note", "")) for s in self.specs.values() if s.get("note")), "")


@dataclass
class Outcome:
    """A claim's verdict, the deciding numbers in one line, the evidence rows and the missing runs."""

    verdict: str
    finding: str
    evidence: pd.DataFrame = field(default_factory=pd.DataFrame)
    missing: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Claim:
    number: int
    statement: str
    source: str
    rule: str
    assess: Callable[[Inputs], Outcome]


# ----------------------------------------------------------------------------------------------
# Shared evidence helpers


@dataclass
class _Runs:
    """The observations of some arms of one experiment, and what stops a verdict."""

    spec: Mapping[str, Any]
    obs: pd.DataFrame
    missing: list[str]
    synthetic: bool
    absent_arms: list[str]


def _arm_runs(spec: Mapping[str, Any], inputs: Inputs, arms: Sequence[str], metrics: Sequence[str]) -> _Runs:
    planned = [r for r in inputs.planned(spec) if r.cell["arm"] in arms]
    obs = observations(planned, inputs.runs, metrics)
    absent = [a for a in arms if a not in {r.cell["arm"] for r in planned}]
    bad = obs[obs["status"] != "complete"] if len(obs) else obs
    missing = list(dict.fromkeys(f"{r.run} ({r.status})" for r in bad.itertuples()))
    synthetic = any(generated_data(str(d)) for d in obs.get("trained_on", pd.Series()).dropna())
    return _Runs(spec, obs, missing, synthetic, absent)


def _blocked(found: Sequence[_Runs], absent_refs: Sequence[str]) -> Outcome | None:
    """The not-run / not-evidence outcome when one applies, else None (the rule decides)."""
    if absent_refs:
        return Outcome(NOT_RUN, f"{NOT_IN_CONFIG}: {', '.join(absent_refs)}")
    absent = [f"{r.spec['id']}: {a}" for r in found for a in r.absent_arms]
    if absent:
        return Outcome(NOT_RUN, "arms not in the experiment: " + "; ".join(absent))
    missing = [m for r in found for m in r.missing]
    if missing:
        return Outcome(NOT_RUN, f"{len(missing)} runs not complete", missing=missing)
    if any(r.synthetic for r in found):
        return Outcome(NOT_EVIDENCE, "the runs used synthetic data")
    return None


def _lines(spec: Mapping[str, Any]) -> list[str]:
    """The table axes other than the arm (one comparison per combination of their labels)."""
    layout = spec["table"]
    return [a for a in [*layout["rows"], *layout["columns"]] if a not in ("arm", "metric")]


def _means(obs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean, sample std and n of ``value`` per ``keys`` (arm and line labels)."""
    grouped = obs.dropna(subset=["value"]).groupby(keys, sort=False)["value"]
    return grouped.agg(mean="mean", std="std", n="count").reset_index()


def _paper_value(ref: str, metric: str, arm: str, labels: Mapping[str, str]) -> float:
    """The paper's (non-grey) number for an arm and line, or NaN where it has none or several."""
    rows = paper.rows_of(ref)
    mask = (rows["our_metric"] == metric) & (rows["arm"] == arm) & ~rows["reference"]
    for key, label in labels.items():
        if key in paper.KEY_AXES:
            mask &= rows[key] == label
    found = rows.loc[mask, "mean"]
    return float(found.iloc[0]) if len(found) == 1 else math.nan


def _fmt(value: float, decimals: int = 2, sign: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{round(value, decimals) + 0.0:{'+' if sign else ''}.{decimals}f}"


def _ours(mean: float, std: float, n: int, decimals: int = 2) -> str:
    text = _fmt(mean, decimals)
    if n > 1 and math.isfinite(std):
        text += f" ± {std:.{decimals}f}"
    return f"{text} (n={n})"


# ----------------------------------------------------------------------------------------------
# Claims 1, 3, 7: one method's test accuracy above another's on every line of some tables


def _above(
    refs: Sequence[tuple[str, str, str]],
    keep: Callable[[Mapping[str, str]], bool] = lambda _: True,
    metric: str = "test_acc",
) -> Callable[[Inputs], Outcome]:
    """``refs``: (paper table, winner arm, loser arm); the winner's mean test accuracy (``metric``: its
    name, e.g. ImageNet's top-1) must be higher on every line (``keep`` selects lines) at equal epochs."""

    def assess(inputs: Inputs) -> Outcome:
        specs = {ref: inputs.experiment(ref) for ref, _, _ in refs}
        absent = [ref for ref, spec in specs.items() if spec is None]
        found = [
            _arm_runs(specs[ref], inputs, [winner, loser], [metric])
            for ref, winner, loser in refs
            if specs[ref] is not None
        ]
        rows = [
            row
            for (ref, winner, loser), runs in zip([r for r in refs if specs[r[0]]], found, strict=True)
            for row in _above_rows(ref, runs, winner, loser, keep, metric)
        ]
        evidence = pd.DataFrame(rows)
        blocked = _blocked(found, absent)
        if blocked is None and len(evidence) and not evidence["equal epochs"].eq("yes").all():
            blocked = Outcome(NOT_RUN, "the two arms ran different numbers of epochs")
        outcome = blocked or _decide(evidence["holds"].eq("yes").tolist() if len(evidence) else [])
        outcome.evidence = evidence
        if len(evidence):
            holds = int(evidence["holds"].eq("yes").sum())
            outcome.finding = "; ".join(
                filter(None, [outcome.finding, f"holds on {holds} of {len(evidence)} lines"])
            )
        return outcome

    return assess


def _above_rows(
    ref: str,
    runs: _Runs,
    winner: str,
    loser: str,
    keep: Callable[[Mapping[str, str]], bool],
    metric: str = "test_acc",
) -> list[dict[str, Any]]:
    lines = _lines(runs.spec)
    if runs.obs.empty:
        return []
    means = _means(runs.obs, ["arm", *lines])
    epochs = runs.obs.groupby(["arm", *lines], sort=False)["epochs"].agg(lambda e: set(e.dropna()))
    out = []
    for labels in _line_labels(runs.obs, lines):
        if not keep(labels):
            continue
        w, l_ = _pick(means, winner, labels), _pick(means, loser, labels)
        key = tuple(labels.values())
        same_epochs = epochs.get((winner, *key), set()) == epochs.get((loser, *key), set())
        paper_delta = _paper_value(ref, metric, winner, labels) - _paper_value(ref, metric, loser, labels)
        delta = w["mean"] - l_["mean"]
        out.append(
            {
                "paper": ref,
                **{_axis_title(a): v for a, v in labels.items()},
                "lower": loser,
                "lower acc (%)": _ours(l_["mean"], l_["std"], l_["n"]),
                "higher": winner,
                "higher acc (%)": _ours(w["mean"], w["std"], w["n"]),
                "Δ ours": _fmt(delta, sign=True),
                "Δ paper": _fmt(paper_delta, sign=True),
                "equal epochs": "yes" if same_epochs else "no",
                "holds": "yes" if delta > 0 else "no",
            }
        )
    return out


def _line_labels(obs: pd.DataFrame, lines: list[str]) -> list[dict[str, str]]:
    if not lines:
        return [{}]
    combos = obs[lines].drop_duplicates()
    return [dict(zip(lines, values, strict=True)) for values in combos.itertuples(index=False)]


def _pick(means: pd.DataFrame, arm: str, labels: Mapping[str, str]) -> dict[str, Any]:
    mask = means["arm"] == arm if len(means) else pd.Series(dtype=bool)
    for axis, label in labels.items():
        mask &= means[axis] == label
    found = means[mask] if len(means) else means
    if len(found) != 1:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return found.iloc[0].to_dict()


def _axis_title(axis: str) -> str:
    return axis_name(axis)


def _decide(holds: Sequence[bool]) -> Outcome:
    if not holds:
        return Outcome(NOT_RUN, "no runs to compare")
    return Outcome(REPRODUCED if all(holds) else NOT_REPRODUCED, "")


def _noisy(labels: Mapping[str, str]) -> bool:
    return labels.get("label_noise", "0%") != "0%"


# ----------------------------------------------------------------------------------------------
# Claim 2: Table 11 times


def _two_device_time(inputs: Inputs) -> Outcome:
    spec = inputs.experiment("Table 11")
    arms = ["SAM", "mSAM (m=2)", "SAMPa-0.2"]
    if spec is None:
        return Outcome(NOT_RUN, f"{NOT_IN_CONFIG}: Table 11")
    runs = _arm_runs(spec, inputs, arms, ["time_per_epoch_s"])
    means = _means(runs.obs, ["arm"]).set_index("arm") if len(runs.obs) else pd.DataFrame()
    devices = {r.cell["arm"]: int(r.settings.get("devices", 1)) for r in inputs.planned(spec)}
    rows = []
    for arm in arms:
        got = means.loc[arm] if arm in means.index else {"mean": math.nan, "std": math.nan, "n": 0}
        rows.append(
            {
                "Method": arm,
                "devices": devices.get(arm, "—"),
                "time/epoch (s)": _ours(got["mean"], got["std"], int(got["n"])),
                "× SAM": _fmt(got["mean"] / _mean(means, "SAM")),
                "paper (s)": _fmt(_paper_value("Table 11", "time_per_epoch_s", arm, {})),
                "paper × SAM": _fmt(
                    _paper_value("Table 11", "time_per_epoch_s", arm, {})
                    / _paper_value("Table 11", "time_per_epoch_s", "SAM", {})
                ),
            }
        )
    outcome = _blocked([runs], [])
    if outcome is None and devices.get("SAMPa-0.2") != 2:
        outcome = Outcome(NOT_RUN, "SAMPa-0.2 ran on one device in this config (the claim is about two)")
    ratio = _mean(means, "SAMPa-0.2") / _mean(means, "SAM")
    faster = _mean(means, "SAMPa-0.2") < _mean(means, "mSAM (m=2)")
    paper_ratio = _paper_value("Table 11", "time_per_epoch_s", "SAMPa-0.2", {}) / _paper_value(
        "Table 11", "time_per_epoch_s", "SAM", {}
    )
    below = "yes" if faster else "no"
    finding = f"SAMPa-0.2 / SAM = {_fmt(ratio)} (paper {_fmt(paper_ratio)}); below mSAM (m=2): {below}"
    if outcome is None:
        holds = abs(ratio - TIME_RATIO_TARGET) <= TIME_RATIO_TOLERANCE and faster
        outcome = Outcome(REPRODUCED if holds else NOT_REPRODUCED, "")
    outcome.finding = "; ".join(filter(None, [outcome.finding, finding]))
    outcome.evidence = pd.DataFrame(rows)
    return outcome


def _mean(means: pd.DataFrame, arm: str) -> float:
    return float(means.loc[arm, "mean"]) if arm in means.index else math.nan


# ----------------------------------------------------------------------------------------------
# Claim 4: Figure 1 (toy problem)


def _toy(inputs: Inputs) -> Outcome:
    spec = inputs.experiment("Figure 1")
    if spec is None:
        return Outcome(NOT_RUN, f"{NOT_IN_CONFIG}: Figure 1")
    summary = inputs.toy_summary
    if summary is None or summary.empty:
        return Outcome(NOT_RUN, "no toy summary (python -m sampa toy --summary FILE)")
    expected = {m: not m.startswith(("RandSAM", "OptSAM")) for m in summary["method"]}
    converged = [str(c).strip().lower() == "true" for c in summary["converged"]]
    evidence = pd.DataFrame(
        {
            "Method": summary["method"],
            "tail-mean distance": [f"{d:.2e}" for d in summary["tail_mean_distance"]],
            "threshold": [f"{t:.2e}" for t in summary["threshold"]],
            "converged": ["yes" if c else "no" for c in converged],
            "paper": ["converges" if expected[m] else "does not converge" for m in summary["method"]],
        }
    )
    needed = {"SAM", "RandSAM", "OptSAM"}
    if not needed <= set(summary["method"]) or not any(m.startswith("SAMPa-") for m in summary["method"]):
        return Outcome(NOT_RUN, "the toy summary lacks SAM, RandSAM, OptSAM or SAMPa", evidence)
    agree = [expected[m] == c for m, c in zip(summary["method"], converged, strict=True)]
    verdict = REPRODUCED if all(agree) else NOT_REPRODUCED
    return Outcome(verdict, f"{sum(agree)} of {len(agree)} methods behave as in the paper", evidence)


# ----------------------------------------------------------------------------------------------
# Claim 5: Figure 4 (cosine between the gradients at y_t and x_t)


def _cosine(inputs: Inputs) -> Outcome:
    spec = inputs.experiment("Figure 4")
    if spec is None:
        return Outcome(NOT_RUN, f"{NOT_IN_CONFIG}: Figure 4")
    arms = list(dict.fromkeys(r.cell["arm"] for r in inputs.planned(spec)))
    runs = _arm_runs(spec, inputs, arms, ["test_acc"])
    blocked = _blocked([runs], [])
    if blocked is not None and blocked.verdict == NOT_RUN:
        return blocked
    paths = list(dict.fromkeys(runs.obs["run"]))
    epochs = collect_epochs([inputs.runs_root / p for p in paths], inputs.runs_root)
    column = next(
        (c for c in ("stats.grad_cosine.min", "stats.grad_cosine.mean") if c in epochs.columns), None
    )
    if column is None:
        return Outcome(NOT_RUN, "the runs' logs have no grad_cosine (diagnostics_every not set)")
    probed = epochs.dropna(subset=[column])
    rows = [
        {
            "run": run,
            "epochs probed": len(group),
            "lowest cosine": f"{group[column].min():.4f}",
            "median of epoch means": f"{group['stats.grad_cosine.mean'].median():.4f}",
            "last epoch mean": f"{group['stats.grad_cosine.mean'].iloc[-1]:.4f}",
        }
        for run, group in probed.groupby("run", sort=True)
    ]
    lowest = float(probed[column].min()) if len(probed) else math.nan
    finding = f"lowest cosine over {len(probed)} run-epochs: {_fmt(lowest, 4)} (paper: above 0.99)"
    if blocked is not None:
        return Outcome(blocked.verdict, f"{blocked.finding}; {finding}", pd.DataFrame(rows))
    if not len(probed):
        return Outcome(NOT_RUN, "no probed epochs in the logs", pd.DataFrame(rows))
    return Outcome(REPRODUCED if lowest >= COSINE_FLOOR else NOT_REPRODUCED, finding, pd.DataFrame(rows))


# ----------------------------------------------------------------------------------------------
# Claim 6: Table 14 memory


def _memory(inputs: Inputs) -> Outcome:
    spec = inputs.experiment("Table 14")
    if spec is None:
        return Outcome(NOT_RUN, f"{NOT_IN_CONFIG}: Table 14")
    runs = _arm_runs(spec, inputs, ["SAM", "SAMPa-0.2"], ["memory_per_device_mib"])
    means = _means(runs.obs, ["arm"]).set_index("arm") if len(runs.obs) else pd.DataFrame()
    ratio = _mean(means, "SAMPa-0.2") / _mean(means, "SAM")
    paper_ratio = _paper_value("Table 14", "memory_per_device_mib", "SAMPa-0.2", {}) / _paper_value(
        "Table 14", "memory_per_device_mib", "SAM", {}
    )
    rows = [
        {
            "Method": arm,
            "memory per device (MiB)": _ours(_mean(means, arm), _std(means, arm), _n(means, arm), 0),
            "paper (MiB)": _fmt(_paper_value("Table 14", "memory_per_device_mib", arm, {}), 0),
        }
        for arm in ("SAM", "SAMPa-0.2")
    ]
    finding = f"SAMPa-0.2 / SAM = {_fmt(ratio)} (paper {_fmt(paper_ratio)})"
    outcome = _blocked([runs], [])
    if outcome is None and (runs.obs["source"] == "fallback").any():
        outcome = Outcome(NOT_RUN, "the runs have no device memory (CPU runs record host RSS only)")
    if outcome is None:
        outcome = Outcome(REPRODUCED if ratio <= 1 + MEMORY_SLACK else NOT_REPRODUCED, "")
    outcome.finding = "; ".join(filter(None, [outcome.finding, finding]))
    outcome.evidence = pd.DataFrame(rows)
    return outcome


def _std(means: pd.DataFrame, arm: str) -> float:
    return float(means.loc[arm, "std"]) if arm in means.index else math.nan


def _n(means: pd.DataFrame, arm: str) -> int:
    return int(means.loc[arm, "n"]) if arm in means.index else 0


# ----------------------------------------------------------------------------------------------
# Claim 8: vSAM against SAM


def _vsam(inputs: Inputs) -> Outcome:
    spec = next(
        (
            s
            for s in inputs.specs.values()
            if s["kind"] == "table" and {"vSAM", "SAM"} <= {a["label"] for a in s["arms"]}
        ),
        None,
    )
    if spec is None:
        return Outcome(NOT_RUN, f"{NOT_IN_CONFIG}: a table with vSAM and SAM arms")
    runs = _arm_runs(spec, inputs, ["vSAM", "SAM"], ["test_acc", "time_per_epoch_s"])
    lines = _lines(spec)
    means = _means(runs.obs, ["metric", "arm", *lines])
    rows, holds = [], []
    for labels in _line_labels(runs.obs, lines):
        acc = {a: _pick(means[means["metric"] == "test_acc"], a, labels) for a in ("SAM", "vSAM")}
        time = {a: _pick(means[means["metric"] == "time_per_epoch_s"], a, labels) for a in ("SAM", "vSAM")}
        ratio = time["vSAM"]["mean"] / time["SAM"]["mean"]
        drop = acc["vSAM"]["mean"] - acc["SAM"]["mean"]
        ok = VSAM_TIME_RATIO[0] <= ratio <= VSAM_TIME_RATIO[1] and drop >= -VSAM_ACCURACY_DROP
        holds.append(ok)
        rows.append(
            {
                **{_axis_title(a): v for a, v in labels.items()},
                "SAM acc": _ours(acc["SAM"]["mean"], acc["SAM"]["std"], acc["SAM"]["n"]),
                "vSAM acc": _ours(acc["vSAM"]["mean"], acc["vSAM"]["std"], acc["vSAM"]["n"]),
                "Δ acc": _fmt(drop, sign=True),
                "vSAM / SAM time": _fmt(ratio),
                "holds": "yes" if ok else "no",
            }
        )
    outcome = _blocked([runs], []) or _decide(holds)
    outcome.finding = "; ".join(
        filter(None, [outcome.finding, f"holds on {sum(holds)} of {len(holds)} lines"])
    )
    outcome.evidence = pd.DataFrame(rows)
    return outcome


# ----------------------------------------------------------------------------------------------
# Claims 9-11: ImageNet, ViT fine-tuning, GLUE (Tables 3, 5, 6)


def _unless_not_run(
    ref: str, assess: Callable[[Inputs], Outcome], *, every_line: bool = True
) -> Callable[[Inputs], Outcome]:
    """``assess``, or "not run" with what is missing when ``ref``'s data, weights or extra are not here.

    When only some of its runs can run here (the spec's ``needs``), the finding starts with "partial: N
    of M runs" and what the others need. The claim is then decided only where a part decides it: a line
    that fails refutes a claim about ``every_line``; anything else stays "not run".
    """

    def guarded(inputs: Inputs) -> Outcome:
        spec = inputs.experiment(ref)
        if spec is not None and spec.get("not_run"):
            return Outcome(NOT_RUN, f"{ref} not run: {spec['not_run']}")
        outcome = assess(inputs)
        if spec is None or not spec.get("needs"):
            return outcome
        return _partial(ref, outcome, every_line, inputs.partial(spec))

    return guarded


def _partial(ref: str, outcome: Outcome, every_line: bool, partial: str) -> Outcome:
    """``outcome`` assessed on the runs of ``ref`` that could run here (``partial``: how many, what the
    rest needs): said so, and undecided unless a failing line refutes an every-line claim."""
    note = f"{ref} partial: {partial}"
    decided = outcome.verdict == NOT_REPRODUCED and every_line
    if outcome.verdict in (REPRODUCED, NOT_REPRODUCED) and not decided:
        on_part = f"on those runs alone: {outcome.verdict}"
        finding = "; ".join(filter(None, [note, on_part, outcome.finding]))
        return Outcome(NOT_RUN, finding, outcome.evidence, outcome.missing)
    finding = "; ".join(filter(None, [note, outcome.finding]))
    return Outcome(outcome.verdict, finding, outcome.evidence, outcome.missing)


def _glue_average(inputs: Inputs) -> Outcome:
    """SAMPa-0.1's GLUE average (mean over the task lines of the task score ``glue_score``) above SAM's."""
    spec = inputs.experiment("Table 6")
    if spec is None:
        return Outcome(NOT_RUN, f"{NOT_IN_CONFIG}: Table 6")
    runs = _arm_runs(spec, inputs, ["SAMPa-0.1", "SAM"], ["glue_score"])
    lines = [a for a in _lines(spec) if a == "dataset"]
    means = _means(runs.obs, ["arm", *lines]) if len(runs.obs) else pd.DataFrame()
    labels = _line_labels(runs.obs, lines) if len(runs.obs) else []
    average = {
        a: statistics.fmean([_pick(means, a, lab)["mean"] for lab in labels] or [math.nan])
        for a in ("SAM", "SAMPa-0.1")
    }
    rows = [{"Method": a, "GLUE average (%)": _fmt(v), "tasks": len(labels)} for a, v in average.items()]
    outcome = _blocked([runs], []) or _decide([average["SAMPa-0.1"] > average["SAM"]] if labels else [])
    outcome.finding = "; ".join(
        filter(
            None,
            [
                outcome.finding,
                f"SAMPa-0.1 − SAM = {_fmt(average['SAMPa-0.1'] - average['SAM'], sign=True)} (paper +1.40)",
            ],
        )
    )
    outcome.evidence = pd.DataFrame(rows)
    return outcome


# ----------------------------------------------------------------------------------------------
# The claims


CLAIMS: tuple[Claim, ...] = (
    Claim(
        1,
        "SAMPa-0.2 beats SAM on every model of Tables 1 and 2 at equal epochs",
        "Tables 1, 2",
        "On every model of both tables, SAMPa-0.2's mean test accuracy is higher than SAM's (the 200-epoch "
        "arms; both must have run the same number of epochs).",
        _above([("Table 1", "SAMPa-0.2", "SAM"), ("Table 2", "SAMPa-0.2", "SAM")]),
    ),
    Claim(
        2,
        "SAMPa-0.2's time per epoch is about 0.58x SAM's on two devices, and lower than mSAM (m=2)'s",
        "Table 11",
        f"SAMPa-0.2 runs on two devices; its mean time per epoch divided by SAM's (one device) is within "
        f"{TIME_RATIO_TARGET} ± {TIME_RATIO_TOLERANCE:g}, and below mSAM (m=2)'s mean time.",
        _two_device_time,
    ),
    Claim(
        3,
        "SAMPa-0.2 is more robust than SAM under label noise",
        "Table 7",
        "At every noise rate above 0% in the table, SAMPa-0.2's mean test accuracy is higher than SAM's.",
        _above([("Table 7", "SAMPa-0.2", "SAM")], keep=_noisy),
    ),
    Claim(
        4,
        "RandSAM and OptSAM fail to converge on f(x)=||x||^2 while SAM and SAMPa-lambda converge",
        "Figure 1",
        "In the toy run (python -m sampa toy), SAM and every SAMPa-lambda converge and RandSAM and OptSAM do "
        "not; converged = mean distance to the minimiser over the last 10% of steps <= 4 eta_T rho.",
        _toy,
    ),
    Claim(
        5,
        "cos(grad f(y_t), grad f(x_t)) stays above 0.99 over training",
        "Figure 4, Appendix C",
        f"The lowest cosine of any probed step in any epoch of any seed is at least {COSINE_FLOOR} "
        "(per-epoch minimum from log.jsonl).",
        _cosine,
    ),
    Claim(
        6,
        "SAMPa-0.2 uses no more memory per device than SAM",
        "Table 14",
        f"SAMPa-0.2's mean peak device memory per device is at most {1 + MEMORY_SLACK:g}x SAM's "
        f"({MEMORY_SLACK:.0%} for allocator granularity); GPU runs only (CPU runs have no device memory).",
        _memory,
    ),
    Claim(
        7,
        "OptSAM and SAM-db fall below SAM",
        "Tables 9, 10",
        "On every model, OptSAM's (Table 9) and SAM-db's (Table 10) mean test accuracy is lower than SAM's.",
        _above([("Table 9", "SAM", "OptSAM"), ("Table 10", "SAM", "SAM-db")]),
    ),
    Claim(
        8,
        "vSAM is about 40% faster than SAM at comparable accuracy",
        "vSAM paper (Deng et al., 2024)",
        f"On every dataset and model, vSAM's mean time per epoch is {VSAM_TIME_RATIO[0]:.2f}x to "
        f"{VSAM_TIME_RATIO[1]:.2f}x SAM's (0.60x: 40% less time; 0.71x: 1.4x the speed) and its mean test "
        f"accuracy is at most {VSAM_ACCURACY_DROP} pp below SAM's.",
        _vsam,
    ),
    Claim(
        9,
        "SAMPa-0.2 beats SAM on ImageNet-1K (top-1)",
        "Table 3",
        "SAMPa-0.2's mean top-1 test accuracy (ResNet-50, 90 epochs) is higher than SAM's.",
        _unless_not_run("Table 3", _above([("Table 3", "SAMPa-0.2", "SAM")], metric="test_top1_acc")),
    ),
    Claim(
        10,
        "SAMPa-0.2 beats SAM when fine-tuning ViT-B/16",
        "Table 5",
        "On CIFAR-10 and CIFAR-100, SAMPa-0.2's mean test accuracy after fine-tuning is higher than SAM's.",
        _unless_not_run("Table 5", _above([("Table 5", "SAMPa-0.2", "SAM")])),
    ),
    Claim(
        11,
        "SAMPa-0.1 beats SAM on the GLUE average (BERT-base)",
        "Table 6",
        "The mean over the nine GLUE tasks of SAMPa-0.1's mean task score is higher than SAM's.",
        _unless_not_run("Table 6", _glue_average, every_line=False),
    ),
)


@dataclass
class Scorecard:
    outcomes: list[tuple[Claim, Outcome]]
    coverage: pd.DataFrame
    not_compared: list[str]
    profile: str
    note: str

    @property
    def synthetic(self) -> bool:
        return any(o.verdict == NOT_EVIDENCE for _, o in self.outcomes) or self.coverage["synthetic"].any()


def scorecard(inputs: Inputs) -> Scorecard:
    outcomes = [(claim, claim.assess(inputs)) for claim in CLAIMS]
    coverage, not_compared = paper_coverage(inputs)
    return Scorecard(outcomes, coverage, not_compared, inputs.profile, inputs.note)


def paper_coverage(inputs: Inputs) -> tuple[pd.DataFrame, list[str]]:
    """Per paper table: its experiment, how many of its cells were compared, within, outside."""
    rows, lists = [], []
    results = paper.paper_results()
    for ref in dict.fromkeys(results["paper"]):
        cells_in_paper = int((results["paper"] == ref).sum())
        spec = inputs.experiment(ref)
        row = {"paper": ref, "experiment": spec["id"] if spec else "—", "paper cells": cells_in_paper}
        status, counts, synthetic = _table_status(spec, inputs)
        rows.append({**row, **counts, "status": status, "synthetic": synthetic})
        if counts.get("_unmatched"):
            lists.append(f"{ref} ({len(counts['_unmatched'])}): " + "; ".join(counts["_groups"]))
    frame = pd.DataFrame(rows)
    return frame.drop(columns=[c for c in frame.columns if c.startswith("_")]), lists


def _table_status(spec: Mapping[str, Any] | None, inputs: Inputs) -> tuple[str, dict[str, Any], bool]:
    empty = {"compared": 0, WITHIN: 0, OUTSIDE: 0}
    if spec is None:
        return NOT_IN_CONFIG, empty, False
    if spec.get("not_run"):
        return "not run: " + spec["not_run"], empty, False
    planned = inputs.expanded(spec)  # once: the claims, cells, comparison and partial note share it
    cells = cell_table(spec, inputs.runs, planned)
    comparison = compare(spec, cells, inputs.runs, planned)
    if comparison is None:
        return "no comparable metric", empty, False
    counts = comparison.counts()
    status = "synthetic data: no verdicts" if comparison.synthetic else "compared"
    if spec.get("needs"):
        status += f"; partial: {inputs.partial(spec)}"
    shown = {k: counts[k] for k in ("compared", WITHIN, OUTSIDE)}
    unmatched = {"_unmatched": comparison.unmatched, "_groups": comparison.unmatched_groups}
    return status, {**shown, **unmatched}, comparison.synthetic
