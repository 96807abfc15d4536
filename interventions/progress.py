"""Rich progress bars and messages, shared by every long loop (one place to silence them)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")
console = Console(stderr=True)


class RateColumn(TextColumn):
    def __init__(self, unit: str):
        super().__init__("")
        self.unit = unit

    def render(self, task):
        speed = task.finished_speed or task.speed
        return f"{speed:.2f} {self.unit}/s" if speed else f"- {self.unit}/s"


def track(items: Iterable[T], *, description: str, enabled: bool = True, unit: str = "traces") -> Iterator[T]:
    """Iterate with a progress bar showing count, rate and ETA (plain iteration when disabled)."""
    items = list(items)
    if not enabled:
        yield from items
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(unit),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=len(items))
        for item in items:
            yield item
            progress.advance(task)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {message}", highlight=False, soft_wrap=True)


class WarningsOnce:
    """A ``warnings.showwarning`` that prints each distinct warning once, on stderr, in one line.

    Libraries warn from inside every forward (transformers' ``past_key_values`` FutureWarning once
    per condition and trace), and Python's "once per location" filter cannot hold them back: any
    ``warnings.catch_warnings`` block, which pyvene, transformers and our statistics enter,
    invalidates the registry that remembers what was shown. This hook changes nothing about
    which warnings pass the filters; it only stops a repeat of one already printed (same
    category and text) and counts it in ``repeats``.
    """

    def __init__(self, out: Console | None = None):
        self.out = out or console
        self.repeats: dict[tuple[str, str], int] = {}

    def __call__(self, message, category, filename, lineno, file=None, line=None) -> None:
        text = str(message).strip()
        key = (category.__name__, text)
        if key in self.repeats:
            self.repeats[key] += 1
            return
        self.repeats[key] = 0
        first = text.splitlines()[0] if text else ""
        self.out.print(f"[yellow]{_who(filename)} warning:[/yellow] {category.__name__}: {first} "
                       f"[dim]({_origin(filename)}:{lineno}; repeats not shown)[/dim]",
                       highlight=False, soft_wrap=True)


def _who(filename: str) -> str:
    """``library`` for a warning raised outside this package (``progress.warn`` prints our own as ``warning:``)."""
    return "interventions" if Path(filename).resolve().is_relative_to(Path(__file__).resolve().parent) else "library"


def _origin(filename: str) -> str:
    """``transformers/modeling_utils.py`` for a file under site-packages, else the file's name."""
    parts = Path(filename).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            return "/".join(parts[parts.index(marker) + 1:])
    return Path(filename).name


def install_warnings_once(out: Console | None = None) -> WarningsOnce:
    """Route every printed warning of this process through one :class:`WarningsOnce` (the CLI does
    this once per command); returns the hook (its ``repeats`` count what was held back)."""
    hook = warnings.showwarning if isinstance(warnings.showwarning, WarningsOnce) else WarningsOnce(out)
    warnings.showwarning = hook
    return hook


@contextmanager
def warnings_once(out: Console | None = None) -> Iterator[WarningsOnce]:
    """Within the block, each distinct warning is printed once (see :class:`WarningsOnce`)."""
    previous = warnings.showwarning
    hook = WarningsOnce(out)
    warnings.showwarning = hook
    try:
        yield hook
    finally:
        warnings.showwarning = previous


def info(message: str) -> None:
    """A bookkeeping line on stderr (what a job reuses, skips or wrote)."""
    console.print(message, highlight=False, soft_wrap=True, markup=False)


def compact_ranges(numbers) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``0-2, 5, 7-8``."""
    values = sorted({int(x) for x in numbers})
    runs: list[list[int]] = []
    for x in values:
        if runs and x == runs[-1][1] + 1:
            runs[-1][1] = x
        else:
            runs.append([x, x])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
