"""Ctrl-C that always works: deferred across imports that swallow it, recorded in the manifest.

pyvene 0.1.8 imports its model cards inside a bare ``except:`` (``Failed to import blip model,
skipping.``), so a SIGINT that lands there is caught and the run goes on. :func:`sigint_deferred`
holds SIGINT for the length of such a block and raises :class:`KeyboardInterrupt` right after it.
:func:`mark_interrupted` records where a job stopped, so the command line can print how to resume.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def sigint_deferred():
    """Hold SIGINT during the block; if one arrived, raise KeyboardInterrupt when the block ends.

    Outside the main thread (where Python cannot set signal handlers) the block runs as is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    except ValueError:  # not the main interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def mark_interrupted(exc: BaseException, folder: Path | None, phase: str) -> None:
    """Attach the folder a job was writing and the phase it was in to its KeyboardInterrupt."""
    if isinstance(exc, KeyboardInterrupt):
        exc.interrupted_folder = folder  # type: ignore[attr-defined]
        exc.interrupted_phase = phase  # type: ignore[attr-defined]
