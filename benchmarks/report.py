"""What every benchmark does with its figures: print the Markdown, and write it under docs/ when asked."""

from __future__ import annotations

from pathlib import Path


def emit(lines: list[str], write: str | None) -> None:
    text = "\n".join(lines) + "\n"
    print(text)
    if write:
        Path(write).write_text(text)
