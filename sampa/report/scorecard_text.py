"""The reproduction scorecard as Markdown and LaTeX (``results/<config>/tables/reproduction.{md,tex}``).

Rendering only: :func:`sampa.report.scorecard.scorecard` decides the verdicts.
"""

from __future__ import annotations

import pandas as pd

from sampa.report import latex
from sampa.report.scorecard import NOT_EVIDENCE, NOT_REPRODUCED, NOT_RUN, REPRODUCED, Scorecard


def _first_lines(card: Scorecard) -> list[str]:
    lines = []
    if card.synthetic:
        lines.append(
            "SYNTHETIC DATA: runs behind this scorecard used synthetic data; they are not evidence and "
            "get no verdict (their claims say 'not evidence')."
        )
    if card.note:
        lines.append(card.note)
    return lines


def _summary(card: Scorecard) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "#": claim.number,
                "Claim": claim.statement,
                "Paper": claim.source,
                "Verdict": outcome.verdict,
                "Evidence": outcome.finding,
            }
            for claim, outcome in card.outcomes
        ]
    )


def _counts(card: Scorecard) -> str:
    verdicts = pd.Series([o.verdict for _, o in card.outcomes]).value_counts()
    order = (REPRODUCED, NOT_REPRODUCED, NOT_RUN, NOT_EVIDENCE)
    return ", ".join(f"{int(verdicts[v])} {v}" for v in order if v in verdicts)


#: the heading of the list of paper cells that no table of the config compares
NOT_COMPARED = "Paper cells without a counterpart in this config:"

VERDICT_NOTE = (
    "reproduced / not reproduced: the claim's rule holds / fails on our runs (means over seeds); "
    "not run: the experiment is not in this config, runs are missing (listed) or only some can run here "
    "(partial); "
    "not evidence: synthetic data."
)


def render_markdown(card: Scorecard) -> str:
    parts = [f"> **{line}**" for line in _first_lines(card)]
    parts.append(f"# Reproduction scorecard: the SAMPa paper's claims (config `{card.profile}`)")
    parts.append(f"{_counts(card)}. {VERDICT_NOTE}")
    parts.append(_summary(card).to_markdown(index=False, disable_numparse=True))
    for claim, outcome in card.outcomes:
        parts.append(f"## {claim.number}. {claim.statement} ({claim.source})")
        parts.append(f"**Verdict: {outcome.verdict}.** {outcome.finding}\n\nRule: {claim.rule}")
        if len(outcome.evidence):
            parts.append(outcome.evidence.to_markdown(index=False, disable_numparse=True))
        if outcome.missing:
            parts.append(f"Missing runs ({len(outcome.missing)}): " + "; ".join(outcome.missing))
    parts.append("## The paper's tables, cell by cell")
    parts.append(
        "Each table's own file shows every compared cell (ours ± std (n), the paper's ± std, Δ, "
        "within/outside); here are the counts."
    )
    coverage = card.coverage.drop(columns=["synthetic"])
    parts.append(coverage.to_markdown(index=False, disable_numparse=True))
    if card.not_compared:
        parts.append(f"{NOT_COMPARED}\n\n" + "\n".join(f"- {line}" for line in card.not_compared))
    return "\n\n".join(parts) + "\n"


def render_latex(card: Scorecard) -> str:
    """A document body (sections and tables) that compiles in :data:`sampa.report.latex.PREAMBLE`."""
    latex_escape = latex.prose
    lines = [f"% {latex.plain(line)}" for line in _first_lines(card)]
    lines.append(r"\section*{Reproduction scorecard: the SAMPa paper's claims}")
    lines.append(latex_escape(f"Config {card.profile}: {_counts(card)}. {VERDICT_NOTE}"))
    lines.append(_latex_table(_summary(card), "rp{3.6cm}llp{4.4cm}"))
    for claim, outcome in card.outcomes:
        lines.append(rf"\subsection*{{{claim.number}. {latex_escape(claim.statement)} ({claim.source})}}")
        lines.append(
            rf"\textbf{{Verdict: {outcome.verdict}.}} {latex_escape(outcome.finding)}\\ "
            f"Rule: {latex_escape(claim.rule)}"
        )
        if len(outcome.evidence):
            lines.append(_latex_table(outcome.evidence, "l" * len(outcome.evidence.columns)))
        if outcome.missing:
            missing = latex_escape(f"Missing runs ({len(outcome.missing)}): " + "; ".join(outcome.missing))
            lines.append(rf"{{\sloppy\small {missing}\par}}")
    lines.append(r"\subsection*{The paper's tables, cell by cell}")
    coverage = card.coverage.drop(columns=["synthetic"])
    lines.append(_latex_table(coverage, "l" * (len(coverage.columns) - 1) + "p{5cm}"))
    if card.not_compared:
        items = "".join(f"\\item {latex_escape(line)}\n" for line in card.not_compared)
        lines.append(f"{NOT_COMPARED}\n{{\\sloppy\\small\\begin{{itemize}}\n{items}\\end{{itemize}}}}")
    return "\n\n".join(lines) + "\n"


def _latex_table(frame: pd.DataFrame, columns: str) -> str:
    """A booktabs tabular, centred and scaled down to the text width when wider."""
    header = [" & ".join(latex.escape(c) for c in frame.columns) + r" \\"]
    rows = [[latex.prose(v) for v in row] for row in frame.astype(str).itertuples(index=False)]
    body = latex.fit_to_width(latex.tabular(header, rows, columns))
    return "\\begin{center}\\small\n" + body + "\\end{center}"
