"""Input errors that carry every problem at once, each with the path of the field it concerns."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the CLI's light commands run without importing pydantic
    from pydantic import ValidationError


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input: where (a dotted field path) and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        text = f"{self.path}: {self.reason}" if self.path else self.reason
        return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)  # one problem, one line


class InputError(ValueError):
    """Bad input. Raised before anything is computed or declared, listing every problem found."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems: tuple[Problem, ...] = tuple(problems)
        if not self.problems:
            raise ValueError("InputError needs at least one problem")
        super().__init__("; ".join(str(p) for p in self.problems))


class InfeasibleError(InputError):
    """Valid input that cannot be served as asked: no hardware fits, or it costs more than the budget (exit 1,
    not 2: the user's request is well formed, the answer is no)."""


def problems_from_validation_error(error: ValidationError, prefix: str = "") -> list[Problem]:
    """Turn pydantic's errors into Problems with dotted paths (`cluster.capacity.type`)."""
    problems = []
    for item in error.errors():
        parts = [str(p) for p in item["loc"] if p != "__root__"]
        path = ".".join(([prefix] if prefix else []) + parts)
        cause = (item.get("ctx") or {}).get("error")
        if isinstance(cause, InputError):  # a cross-field validator that already named its fields
            problems.extend(Problem(".".join(filter(None, [path, p.path])), p.reason) for p in cause.problems)
            continue
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown field (check the spelling)"
        elif message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        problems.append(Problem(path, message))
    return problems
