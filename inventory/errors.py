"""Errors of the inventory package: every problem found in the operator repo, with its place."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["InventoryError", "Problem"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong in the operator repo, located as precisely as the input allows.

    ``file`` is relative to the repo root when the file lies inside it; ``line``
    and ``column`` are 1-based; ``key_path`` is the dotted path of the key inside
    the document (``devices.berlin-pos-0001.platform``), empty for whole-file
    problems.
    """

    file: Path
    line: int | None
    column: int | None
    key_path: str
    message: str

    def __str__(self) -> str:
        place = self.file.as_posix()
        if self.line is not None:
            place += f":{self.line}"
            if self.column is not None:
                place += f":{self.column}"
        if self.key_path:
            return f"{place}: {self.key_path}: {self.message}"
        return f"{place}: {self.message}"

    def sort_key(self) -> tuple[str, int, int, str, str]:
        """Order problems by file, then position, then key path."""
        return (
            self.file.as_posix(),
            self.line or 0,
            self.column or 0,
            self.key_path,
            self.message,
        )


class InventoryError(Exception):
    """The operator repo cannot be loaded; ``problems`` lists everything found wrong."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = sorted(problems, key=Problem.sort_key)
        super().__init__(self.render())

    def render(self) -> str:
        """All problems, one per line, as ``file:line:col: key.path: message``."""
        return "\n".join(str(p) for p in self.problems)

    def __str__(self) -> str:
        return self.render()
