"""What every CLI verb shares: one-line errors, the console, the command line for manifests."""

from __future__ import annotations

import functools
import shlex
import sys

import typer

from ..errors import UserError
from ..progress import console


def command_line() -> str:
    return "intervene " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def user_errors(fn):
    """Turn a UserError into ``error: <line>`` on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            for line in str(exc).splitlines():
                console.print(f"[red]error:[/red] {line}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper
