"""Long steps shown as they run: the current stage, what it is doing, and the elapsed time (rich, on stderr,
so `--json` on stdout stays clean). Off a terminal each stage that succeeded prints one line when it ends."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

Detail = Callable[[str], None]


class Stages:
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)

    @contextmanager
    def stage(self, title: str) -> Iterator[Detail]:
        started = time.monotonic()
        ok = False
        try:
            if self.console.is_terminal:
                columns = (SpinnerColumn(), TextColumn("[bold]{task.fields[stage]}[/] {task.description}"),
                           TimeElapsedColumn())
                with Progress(*columns, console=self.console, transient=True) as progress:
                    task = progress.add_task("", stage=title)
                    yield lambda detail: progress.update(task, description=escape(detail[:100]))
            else:
                yield lambda detail: None
            ok = True
        finally:
            # Off a terminal only what finished is printed: a failure's own `error:` lines say the rest.
            elapsed = time.monotonic() - started
            if ok or self.console.is_terminal:
                mark = "[green]done[/]" if ok else "[red]failed[/]"
                self.console.print(f"{mark} {escape(title)} ({elapsed:.1f}s)", highlight=False)
