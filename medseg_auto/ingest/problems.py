"""Problems found in the input, and the table that reports all of them at once."""
from __future__ import annotations

import shutil
import textwrap
from dataclasses import dataclass
from typing import Iterable

ERROR = "error"
WARNING = "warning"

# The pseudo case name of problems that concern the dataset as a whole, not one case.
DATASET = "(dataset)"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input: where (case, file), what, and how to fix it.

    ``case`` is the case name, or :data:`DATASET` when no single case is to blame; errors of a case can be
    bypassed with ``--skip-invalid``, dataset errors cannot.
    """

    case: str
    file: str
    problem: str
    fix: str
    severity: str = ERROR

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR


def invalid_cases(problems: Iterable[Problem]) -> set[str]:
    """Names of the cases that have at least one error."""
    return {p.case for p in problems if p.is_error and p.case != DATASET}


def format_table(problems: list[Problem], width: int | None = None) -> str:
    """A plain-text table (case, file, problem, how to fix), wrapped to ``width`` columns (default: the
    terminal's width, at least 120)."""
    width = width or max(120, shutil.get_terminal_size((160, 24)).columns)
    headers = ("", "case", "file", "problem", "how to fix")
    rows = [("ERROR" if p.is_error else "warn", p.case, p.file, p.problem, p.fix) for p in problems]
    fixed = [5, min(28, max([len(headers[1])] + [len(r[1]) for r in rows])),
             min(40, max([len(headers[2])] + [len(r[2]) for r in rows]))]
    rest = max(40, width - sum(fixed) - 4 * 3)
    widths = fixed + [rest * 5 // 9, rest - rest * 5 // 9]

    def render(cells: tuple[str, ...]) -> list[str]:
        wrapped = [textwrap.wrap(c, w, break_long_words=True, break_on_hyphens=False) or [""]
                   for c, w in zip(cells, widths)]
        height = max(len(w) for w in wrapped)
        return [" | ".join((w[i] if i < len(w) else "").ljust(n) for w, n in zip(wrapped, widths)).rstrip()
                for i in range(height)]

    lines = render(headers)
    lines.append("-+-".join("-" * n for n in widths))
    for row in rows:
        lines.extend(render(row))
    return "\n".join(lines)
