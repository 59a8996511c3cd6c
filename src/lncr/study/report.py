"""Problems found in a study, each naming its file, line, what is wrong and the fix."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lncr.identifiers import shown


@dataclass(frozen=True)
class Problem:
    severity: Literal["error", "warning"]
    file: str
    line: int | None  # 1-based line in the file (the CSV header is line 1)
    message: str
    fix: str = ""
    code: str = ""  # stable identifier, e.g. "duplicate-patient"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        text = f"{self.severity.upper()} {where}: {self.message}"
        return f"{text} — fix: {self.fix}" if self.fix else text


@dataclass
class Problems:
    """An ordered collection of problems; validation keeps going after each one."""

    items: list[Problem] = field(default_factory=list)

    def error(self, file: str | Path, line: int | None, message: str, fix: str = "",
              code: str = "") -> None:
        self.items.append(Problem("error", Path(file).name, line, shown(message), shown(fix),
                                  code))

    def warning(self, file: str | Path, line: int | None, message: str, fix: str = "",
                code: str = "") -> None:
        self.items.append(Problem("warning", Path(file).name, line, shown(message),
                                  shown(fix), code))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.items if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.items if p.severity == "warning"]

    def codes(self) -> set[str]:
        return {p.code for p in self.items}
