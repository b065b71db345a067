"""LaTeX text for tables: ASCII-only escaping, booktabs tabulars that never overflow the text width.

Every ``.tex`` file the report writes compiles with pdflatex in this preamble (also in the README)::

    \\documentclass{article}\\usepackage[T1]{fontenc}\\usepackage{booktabs,graphicx}\\usepackage[table]{xcolor}

Only ASCII reaches a ``.tex`` file: symbols become LaTeX macros (``Δ`` -> ``$\\Delta$``, ``≤`` -> ``$\\le$``).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

PREAMBLE = (
    r"\documentclass{article}\usepackage[T1]{fontenc}\usepackage{booktabs,graphicx}"
    r"\usepackage[table]{xcolor}"
)
#: column headers longer than this go on two lines
HEADER_CHARS = 14
#: the grey of the paper's reference columns (Tables 1-2)
REFERENCE_GREY = "black!10"

_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
#: non-ASCII characters of our labels, captions and notes -> (LaTeX, plain ASCII for comments)
_SYMBOLS = {
    "±": (r"$\pm$", "+-"),
    "×": (r"$\times$", "x"),
    "—": ("--", "--"),
    "–": ("--", "-"),
    "−": ("$-$", "-"),
    "Δ": (r"$\Delta$", "Delta"),
    "≤": (r"$\le$", "<="),
    "≥": (r"$\ge$", ">="),
    "≈": (r"$\approx$", "~"),
    "→": (r"$\to$", "->"),
    "λ": (r"$\lambda$", "lambda"),
    "ρ": (r"$\rho$", "rho"),
    "σ": (r"$\sigma$", "sigma"),
    "η": (r"$\eta$", "eta"),
    "μ": (r"$\mu$", "mu"),
    "µ": (r"$\mu$", "mu"),
    "‖": (r"$\|$", "||"),
    "∇": (r"$\nabla$", "grad "),
    "²": (r"\textsuperscript{2}", "^2"),
    "·": (r"$\cdot$", "*"),
    "…": (r"\dots{}", "..."),
    "†": (r"$^\dagger$", "+"),
    "’": ("'", "'"),
    "‘": ("`", "'"),
    "“": ("``", '"'),
    "”": ("''", '"'),
    "\u00a0": ("~", " "),
}


def escape(text: object) -> str:
    """``text`` as LaTeX source: specials escaped, every non-ASCII character a macro (or its base letter)."""
    out = []
    for char in str(text):
        if char in _SPECIAL:
            out.append(_SPECIAL[char])
        elif char in _SYMBOLS:
            out.append(_SYMBOLS[char][0])
        else:
            out.append(_ascii(char))
    return "".join(out)


def prose(text: object) -> str:
    """:func:`escape`, with line breaks allowed after ``/``, ``,`` and ``;`` (long run paths in notes)."""
    out = escape(text)
    for char in "/,;":
        out = out.replace(char, char + r"\allowbreak{}")
    return out


def plain(text: object) -> str:
    """``text`` as plain ASCII (for ``%`` comments): ``±`` -> ``+-``, ``Δ`` -> ``Delta``."""
    return "".join(_SYMBOLS[c][1] if c in _SYMBOLS else _ascii(c) for c in str(text))


def _ascii(char: str) -> str:
    if char.isascii():
        return char
    base = unicodedata.normalize("NFKD", char).encode("ascii", "ignore").decode()  # é -> e
    return base or "?"


def number_cell(text: str, *, bold: bool = False, underline: bool = False) -> str:
    """A formatted cell (``"94.70 ± 0.14 (n=2)"``): only its leading number in bold or underlined, the rest
    (spread, run count) in small type."""
    number, _, rest = str(text).partition(" ")
    head = escape(number)
    if bold:
        head = rf"\textbf{{{head}}}"
    if underline:
        head = rf"\underline{{{head}}}"
    return head + (rf"{{\scriptsize\,{escape(rest)}}}" if rest else "")


def header(label: str, width: int = HEADER_CHARS) -> str:
    """A column header; one longer than ``width`` characters is set on two lines."""
    words = str(label).split(" ")
    if len(label) <= width or len(words) < 2:
        return escape(label)
    cut = min(range(1, len(words)), key=lambda i: abs(len(" ".join(words[:i])) - len(label) / 2))
    lines = (escape(" ".join(words[:cut])), escape(" ".join(words[cut:])))
    return rf"\begin{{tabular}}[b]{{@{{}}c@{{}}}}{lines[0]}\\{lines[1]}\end{{tabular}}"


def fit_to_width(tabular: str) -> str:
    """The tabular as is when it fits the line, else scaled down to ``\\linewidth`` (graphicx)."""
    return (
        "\\sbox0{%\n"
        + tabular.strip()
        + "}%\n\\ifdim\\wd0>\\linewidth\\resizebox{\\linewidth}{!}{\\usebox0}\\else\\usebox0\\fi\n"
    )


def tabular(
    header: Sequence[str], rows: Sequence[Sequence[str]], columns: str, *, rules_after: Sequence[int] = ()
) -> str:
    """A booktabs tabular from ready LaTeX cells: ``header`` lines (already joined with ``&``), body rows,
    ``\\midrule`` after the body rows listed in ``rules_after``."""
    lines = [rf"\begin{{tabular}}{{{columns}}}", r"\toprule", *header, r"\midrule"]
    for i, row in enumerate(rows):
        lines.append(" & ".join(row) + r" \\")
        if i in rules_after and i != len(rows) - 1:
            lines.append(r"\midrule")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def float_table(body: str, caption: str, label: str) -> str:
    """A ``table`` float: centred, small type, caption above."""
    return (
        "\\begin{table}\n\\centering\\small\n"
        + rf"\caption{{{caption}}}"
        + "\n"
        + rf"\label{{{label}}}"
        + "\n"
        + body
        + "\\end{table}\n"
    )
