"""What every benchmark does with its figures: print the Markdown, and write it under docs/ when asked.

A page may carry analysis written by hand below its figures: everything from the KEEP marker line on is kept
when the benchmark writes the page again, so `make bench` refreshes the figures without deleting it.
"""

from __future__ import annotations

from pathlib import Path

KEEP = "<!-- Written by hand: kept when the benchmark rewrites the figures above. -->"


def emit(lines: list[str], write: str | None) -> None:
    text = "\n".join(lines) + "\n"
    print(text)
    if write:
        target = Path(write)
        old = target.read_text() if target.is_file() else ""
        if KEEP in old:
            text += "\n" + old[old.index(KEEP):]
        target.write_text(text)
