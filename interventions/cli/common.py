"""What every CLI verb shares: one-line errors, the consoles, the command line for manifests.

Flags and names follow one scheme across verbs:

- ``--out DIR``: the exact folder a command writes (``detect``, ``run``, ``compare``, ``schema``,
  ``testbed build``); ``--results ROOT``: the root under which ``run``/``experiment`` name a
  new folder ``ROOT/<name>/<run id>``.
- ``--resume DIR``: continue the interrupted job in DIR (``detect``, ``run``);
  ``--overwrite``: replace what ``--out`` holds.
- Spec fields and flags share names: ``attn_implementation`` is ``--attn-implementation``.
- Results (tables, ``--json``) go to stdout; progress, warnings and errors to stderr.

Old spellings (``run --run-dir``, ``--attn``) are kept as second names of the same option.
"""

from __future__ import annotations

import functools
import inspect
import shlex
import sys

import typer
from typer.core import TyperOption

from interventions.errors import UserError
from interventions.progress import console, info  # noqa: F401  (info: shared by the verbs)


def _flag_without_type(display_type_rich):
    """typer >= 0.20 prints ``<bool>`` after every flag (``--overwrite <bool>``), which reads as if the
    flag took a value; a flag takes none, so it shows no type."""

    @functools.wraps(display_type_rich)
    def display(self, ctx):
        if getattr(self, "is_flag", False) and not getattr(self, "count", False):
            return None
        return display_type_rich(self, ctx)

    return display


if hasattr(TyperOption, "display_type_rich"):
    TyperOption.display_type_rich = _flag_without_type(TyperOption.display_type_rich)


def command_line() -> str:
    return "intervene " + " ".join(shlex.quote(a) for a in sys.argv[1:])


_FOLDER_OPTIONS = ("--out", "-o", "--run-dir", "--resume")


def resume_command(folder) -> str:
    """This command line with its output folder given as ``--resume FOLDER`` (``--overwrite`` dropped)."""
    args, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a in _FOLDER_OPTIONS:
            skip = True
            continue
        if a == "--overwrite" or any(a.startswith(o + "=") for o in _FOLDER_OPTIONS if o.startswith("--")):
            continue
        args.append(a)
    return "intervene " + " ".join(shlex.quote(a) for a in [*args, "--resume", str(folder)])


def interrupted_message(exc: KeyboardInterrupt, *, resumable: bool = True) -> str:
    """What to do after Ctrl-C: resume the folder the job was writing, or rerun when nothing was written
    (or when the command has no ``--resume``, as ``experiment``)."""
    folder = getattr(exc, "interrupted_folder", None)
    if folder is None:
        return ("interrupted before any result was written; run the same command again" if resumable
                else "interrupted; run the same command again")
    phase = getattr(exc, "interrupted_phase", None)
    head = f"interrupted{f' during {phase}' if phase else ''}; {folder} is marked interrupted in its manifest.json"
    return f"{head}. Continue with: {resume_command(folder)}" if resumable else f"{head}; run the command again"


def user_errors(fn):
    """Turn a UserError into ``error: <line>`` on stderr and exit code 2 (no traceback), and Ctrl-C into
    one line saying how to resume and exit code 130."""

    resumable = "resume" in inspect.signature(fn).parameters

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            for line in str(exc).splitlines():
                console.print(f"[red]error:[/red] {line}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:
            from rich.markup import escape

            console.print(f"[yellow]{escape(interrupted_message(exc, resumable=resumable))}[/yellow]",
                          highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None

    return wrapper

